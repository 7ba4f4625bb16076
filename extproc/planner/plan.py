"""Does a dual-pool split pay off for this traffic? Size both fleets by simulation and compare.

For the homogeneous baseline (every instance in the long configuration, balanced like the pools
unless told otherwise) and for each candidate ``B_short`` (a short pool provisioned at that context,
the long pool as is, the production router in front), find the fewest instances meeting the SLOs,
and report them next to the closed form α(1 − 1/ρ) with ρ measured by the same simulator.

Every fleet is sized once per replication (a fresh draw of the workload); the spread across them is
the precision of the answer, and a threshold is picked over another only when it is cheaper by more
than that spread.
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from extproc import __version__
from extproc.algorithm import BudgetRouter, LivePressure
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.config import Config, with_options
from extproc.planner.capacity import (
    ErlangComparison,
    alpha_at,
    closed_form_saving,
    erlang_comparison,
    instances_for,
    prefill_floor_p99,
    saturated_throughput,
    short_pool_at,
    slot_wait_probability,
)
from extproc.planner.fleet import LEAST_OUTSTANDING, FleetSim, PoolConfig, SimResult
from extproc.planner.profiles import FleetProfile, InstanceProfile
from extproc.planner.routing import SCRAPE_INTERVAL_S, RouterDispatch, SimClock
from extproc.planner.service_levels import (
    TTFT,
    UTILISATION,
    PoolMetrics,
    Slo,
    fleet_percentiles,
    measured_mask,
    summarise,
)
from extproc.planner.sim_workload import SimWorkload
from extproc.planner.sizing import size_pools
from extproc.router_factory import build_router

HOURS_PER_YEAR = 8760.0
# A P99 over fewer requests rests on fewer than 100 in its tail and is not monotone in fleet size;
# such a pool is sized by Erlang C's slot-wait probability instead and reported as low-confidence.
MIN_CONFIDENT_REQUESTS = 10_000
MAX_SLOT_WAIT = 0.01  # low-count pools: P(a request waits for a batch slot) at most this
SLOT_WAIT = "slot wait (Erlang C)"
DEFAULT_MAX_INSTANCES = 20_000  # per pool: the simulator holds every instance in memory


class PlanProgress(Protocol):
    """What the planner tells a progress display: ticks inside a simulation, and each sized fleet."""

    def __call__(self, label: str, fraction: float) -> None: ...

    def fleet_done(self) -> None: ...


@dataclass(frozen=True)
class PlanSettings:
    profile: FleetProfile
    rate: float
    slo: Slo = field(default_factory=Slo)
    warmup: float = 0.1
    homogeneous_balancer: str | None = None  # None: the pools' balancer, so the comparison is like for like
    pool_balancer: str = LEAST_OUTSTANDING
    homogeneous_seqs: int | None = None  # override max_num_seqs of the baseline (vLLM-style overcommit)
    spillover: bool | None = None  # None: the config's spillover.enabled
    scrape_delay_s: float | None = None  # live-load spillover with this staleness; None: exact in-flight count
    seed: int = 0
    max_reject: float = 0.001  # share of requests a pick may lose to over-context rejections
    max_instances: int = DEFAULT_MAX_INSTANCES
    min_confident_requests: int = MIN_CONFIDENT_REQUESTS  # fewer in a pool: Erlang C sizes it, not its P99
    # The router's settings, as ``serve`` reads them; the plan overrides only B_short, the pool
    # contexts and capacities (from the fleet it sizes) and, when set, spillover.
    config: Config = field(default_factory=Config)

    @property
    def spills(self) -> bool:
        return self.config.spillover.enabled if self.spillover is None else self.spillover

    @property
    def baseline_balancer(self) -> str:
        return self.homogeneous_balancer or self.pool_balancer

    @property
    def like_for_like(self) -> bool:
        return self.baseline_balancer == self.pool_balancer

    @property
    def homogeneous(self) -> InstanceProfile:
        prof = self.profile.homogeneous
        if self.homogeneous_seqs is None:
            return prof
        out = dataclasses.replace(
            prof,
            name=f"{prof.name}@{self.homogeneous_seqs}seqs",
            max_num_seqs=self.homogeneous_seqs,
            max_num_batched_tokens=max(prof.max_num_batched_tokens, self.homogeneous_seqs + 1),
        )
        out.validate()
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "rate": self.rate,
            "slo": dataclasses.asdict(self.slo),
            "warmup": self.warmup,
            "homogeneous_balancer": self.baseline_balancer,
            "pool_balancer": self.pool_balancer,
            "baseline": "like-for-like"
            if self.like_for_like
            else f"MISMATCHED: homogeneous {self.baseline_balancer}, pools {self.pool_balancer}",
            "homogeneous_max_num_seqs": self.homogeneous.max_num_seqs,
            "spillover": self.spills,
            "scrape_delay_s": self.scrape_delay_s,
            "seed": self.seed,
            "max_reject": self.max_reject,
            "max_instances": self.max_instances,
            "min_confident_requests": self.min_confident_requests,
            "counts": f"requests and rejections after the first {self.warmup:.0%} (warm-up) of each run",
        }


@dataclass
class FleetOutcome:
    """A sized fleet and how it behaved at that size."""

    instances: tuple[int, ...]
    pool_gpus: list[int]
    usd_per_year: float
    feasible: bool
    reason: str
    pools: list[PoolMetrics]
    fleet: dict[str, float]
    simulations: int
    offered_utilisation: list[float]  # per pool: its arrival rate / (instances x saturated throughput)
    binding: list[str]  # per pool: the limit that sized it (UTILISATION, TTFT, TPOT, rejections, slot wait)
    low_confidence: list[bool]  # per pool: sized on fewer than MIN_CONFIDENT_REQUESTS measured requests

    @property
    def gpus(self) -> int:
        return sum(self.pool_gpus)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instances": list(self.instances),
            "gpus": self.gpus,
            "pool_gpus": self.pool_gpus,
            "usd_per_year": self.usd_per_year,
            "feasible": self.feasible,
            "reason": self.reason,
            "simulations": self.simulations,
            "offered_utilisation": self.offered_utilisation,
            "binding": self.binding,
            "low_confidence": self.low_confidence,
            "fleet": self.fleet,
            "pools": [p.as_dict() for p in self.pools],
        }


@dataclass
class ThresholdOutcome:
    b_short: int
    alpha: float  # F(B_short) over true totals
    alpha_routed: float  # share the router actually sent short in the sized run
    mu_short: float
    mu_long: float
    rho: float  # mu_short / mu_homogeneous, as the closed form defines it
    closed_form_saving: float
    closed_form_gpus: float
    dual: FleetOutcome
    saving: float | None  # simulated: 1 - dual GPUs / homogeneous GPUs
    misrouted_long_to_short: int
    spilled: int
    rejected: int  # after the warm-up: over context or full queue (under-estimates the short pool refuses)
    rejected_share: float  # rejected / requests after the warm-up
    qualified: bool = False
    disqualified: str = ""  # why not, when not qualified

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "dual"}
        out["dual"] = self.dual.as_dict()
        return out


@dataclass
class Replicate:
    """Every fleet sized on one draw of the workload."""

    seed: int
    requests: int
    mu_homogeneous: float
    homogeneous: FleetOutcome
    thresholds: list[ThresholdOutcome]

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "requests": self.requests,
            "mu_homogeneous": self.mu_homogeneous,
            "homogeneous": self.homogeneous.as_dict(),
            "thresholds": [t.as_dict() for t in self.thresholds],
        }


@dataclass(frozen=True)
class Spread:
    """One figure across replications."""

    values: tuple[float, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def as_dict(self) -> dict[str, Any]:
        return {"mean": self.mean, "min": self.lo, "max": self.hi, "values": list(self.values)}


@dataclass
class ThresholdVerdict:
    """A threshold across replications: qualified only if it qualified in every one."""

    b_short: int
    qualified: bool
    reason: str
    gpus: Spread
    usd_per_year: Spread
    saving: Spread | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "b_short": self.b_short,
            "qualified": self.qualified,
            "disqualified": self.reason,
            "gpus": self.gpus.as_dict(),
            "usd_per_year": self.usd_per_year.as_dict(),
            "saving": None if self.saving is None else self.saving.as_dict(),
        }


@dataclass
class PlanReport:
    settings: dict[str, Any]
    trace: str
    replicates: list[Replicate]
    homogeneous_gpus: Spread
    homogeneous_usd: Spread
    verdicts: list[ThresholdVerdict]
    best: int | None  # index into thresholds of the pick; None when no split qualifies and pays off
    tied: list[int]  # other qualified thresholds within the spread of the pick
    pick_note: str
    erlang: list[ErlangComparison]
    version: str = __version__

    @property
    def requests(self) -> int:
        return self.replicates[0].requests

    @property
    def homogeneous(self) -> FleetOutcome:
        return self.replicates[0].homogeneous

    @property
    def thresholds(self) -> list[ThresholdOutcome]:
        return self.replicates[0].thresholds

    @property
    def mu_homogeneous(self) -> float:
        return self.replicates[0].mu_homogeneous

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "settings": self.settings,
            "trace": self.trace,
            "requests": self.requests,
            "replications": len(self.replicates),
            "homogeneous_gpus": self.homogeneous_gpus.as_dict(),
            "homogeneous_usd_per_year": self.homogeneous_usd.as_dict(),
            "verdicts": [v.as_dict() for v in self.verdicts],
            "best_b_short": None if self.best is None else self.verdicts[self.best].b_short,
            "tied_with_best": [self.verdicts[i].b_short for i in self.tied],
            "pick_note": self.pick_note,
            "erlang_c_check": [e.as_dict() for e in self.erlang],
            "replicates": [r.as_dict() for r in self.replicates],
        }


def usd_per_year(pools: Sequence[tuple[InstanceProfile, int]]) -> float:
    return sum(prof.usd_per_hour * n for prof, n in pools) * HOURS_PER_YEAR


def _stream(seed: int, *key: object) -> np.random.Generator:
    """A random stream of its own for each named use, so that adding a threshold to a sweep (or a
    fleet to a plan) leaves every other fleet's draws as they were."""
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in key)])


class Planner:
    """Sizes every fleet of a plan on one workload (one replication)."""

    def __init__(self, settings: PlanSettings, wl: SimWorkload, progress: PlanProgress | None = None) -> None:
        if not settings.rate > 0:
            raise ValueError("rate must be > 0 req/s")
        long_ctx = settings.profile.long.max_model_len
        if not (wl.total <= long_ctx).any():
            raise ValueError(
                f"no request of the trace fits the long pool's context ({long_ctx:,} tokens): every "
                "one would be rejected, so there is nothing to size"
            )
        self.s = settings
        self.wl = wl
        self.progress = progress
        self._mu: dict[tuple[str, str], float] = {}

    # --- building blocks -------------------------------------------------------------------
    def _tick(self, label: str) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        n = max(1, len(self.wl))
        report = self.progress
        label = f"seed {self.s.seed}: {label}"
        return lambda i: report(label, i / n)

    def _fleet_done(self) -> None:
        if self.progress is not None:
            self.progress.fleet_done()

    def mu(self, profile: InstanceProfile, traffic: str, wl: SimWorkload) -> float:
        key = (profile.name, traffic)
        if key not in self._mu:
            self._mu[key] = saturated_throughput(profile, wl, _stream(self.s.seed, "mu", *key))
        return self._mu[key]

    def simulate_homogeneous(self, n: int, wl: SimWorkload | None = None, label: str = "") -> SimResult:
        cfg = PoolConfig("homogeneous", self.s.homogeneous, n, self.s.baseline_balancer)
        return FleetSim([cfg]).run(wl or self.wl, self._tick(label or f"homogeneous x{n}"))

    def router(
        self,
        b_short: int,
        short_slots: int,
        long_slots: int,
        clock: SimClock,
        spillover: bool | None = None,
        live: bool = False,
    ) -> BudgetRouter:
        """The production router (``build_router`` over the plan's config) for a fleet at ``b_short``
        with these slots, on simulated time. Its sampling draws from this threshold's own stream, so
        adding a threshold to a sweep leaves the others' routers as they were. ``live``: its pressure
        is the live-load policy with ``scrape_delay_s`` staleness (``RouterDispatch`` delivers samples)."""
        cfg = with_options(
            self.s.config,
            routing={"b_short": b_short, "short_context": b_short, "long_context": self.s.profile.long.max_model_len},
            spillover={
                "enabled": self.s.spills if spillover is None else spillover,
                "short_capacity": short_slots,
                "long_capacity": long_slots,
            },
        )
        pressure = None
        if live and self.s.scrape_delay_s is not None:  # never stale in simulation: every sample arrives
            max_age = self.s.scrape_delay_s + 2 * SCRAPE_INTERVAL_S
            pressure = LivePressure({SHORT: short_slots, LONG: long_slots}, max_age, clock)
        rng = random.Random(int(_stream(self.s.seed, "router", b_short).integers(2**63)))
        return build_router(cfg, clock, rng, pressure)

    def simulate_dual(
        self, b_short: int, n_short: int, n_long: int, wl: SimWorkload | None = None, label: str = ""
    ) -> tuple[SimResult, RouterDispatch]:
        wl = wl or self.wl
        short = short_pool_at(self.s.profile.short, b_short)
        long = self.s.profile.long
        clock = SimClock()
        slots = (n_short * short.max_num_seqs, n_long * long.max_num_seqs)
        router = self.router(b_short, *slots, clock, live=True)
        dispatch = RouterDispatch(router, wl, clock, self.s.scrape_delay_s, SCRAPE_INTERVAL_S)
        pools = [
            PoolConfig("short", short, n_short, self.s.pool_balancer),
            PoolConfig("long", long, n_long, self.s.pool_balancer),
        ]
        res = FleetSim(pools, dispatch).run(wl, self._tick(label or f"B={b_short} {n_short}+{n_long}"))
        return res, dispatch

    def _judge(
        self, res: SimResult, profiles: Sequence[InstanceProfile], mus: Sequence[float]
    ) -> list[tuple[str, ...]]:
        """Per pool, the limits it misses at this size (empty: it passes). A pool with too few
        measured requests for a P99 is judged by Erlang C's slot-wait probability, which only falls
        as the pool grows."""
        keep = measured_mask(res, self.s.warmup)
        arr = res.workload.arrival[keep]
        window = max(float(arr[-1] - arr[0]), 1e-9) if len(arr) else 1e-9
        out: list[tuple[str, ...]] = []
        for pm, prof, mu in zip(summarise(res, self.s.warmup), profiles, mus, strict=True):
            if 0 < pm.requests < self.s.min_confident_requests:
                p = slot_wait_probability(pm.instances, prof, pm.requests / window, mu)
                out.append(() if p <= MAX_SLOT_WAIT else (SLOT_WAIT,))
            else:
                out.append(pm.failures(self.s.slo))
        return out

    def _outcome(
        self,
        res: SimResult,
        sizes: tuple[int, ...],
        profiles: Sequence[InstanceProfile],
        mus: Sequence[float],
        feasible: bool,
        reason: str,
        sims: int,
        trials: dict[tuple[int, ...], list[tuple[str, ...]]],
    ) -> FleetOutcome:
        pools = summarise(res, self.s.warmup)
        share = [float(np.mean(res.pool == p)) for p in range(len(sizes))]
        offered = [
            self.s.rate * f / (n * mu) if mu > 0 else float("nan") for f, n, mu in zip(share, sizes, mus, strict=True)
        ]
        return FleetOutcome(
            instances=sizes,
            pool_gpus=[p.gpus * n for p, n in zip(profiles, sizes, strict=True)],
            usd_per_year=usd_per_year(list(zip(profiles, sizes, strict=True))),
            feasible=feasible,
            reason=reason,
            pools=pools,
            fleet=fleet_percentiles(res, self.s.warmup),
            simulations=sims,
            offered_utilisation=offered,
            binding=_binding(trials, sizes, feasible, reason),
            low_confidence=[0 < p.requests < self.s.min_confident_requests for p in pools],
        )

    def _check_cap(self, what: str, sizes: Sequence[int]) -> None:
        if max(sizes) > self.s.max_instances:
            raise ValueError(
                f"at {self.s.rate:g} req/s the {what} needs at least {max(sizes):,} instances in one pool (its "
                f"utilisation floor), above --max-instances {self.s.max_instances:,}: lower --rate, or raise the "
                "cap if this machine has the memory"
            )

    # --- sizing ----------------------------------------------------------------------------
    def size_homogeneous(self) -> tuple[FleetOutcome, float]:
        prof = self.s.homogeneous
        mu = self.mu(prof, "all", self.wl)
        floor = prefill_floor_p99(prof, self.wl)
        start = instances_for(self.s.rate, mu, self.s.slo.util_cap)
        self._check_cap("homogeneous fleet", [start])
        trials: dict[tuple[int, ...], list[tuple[str, ...]]] = {}
        if floor > self.s.slo.ttft_p99_s:
            res = self.simulate_homogeneous(start)
            reason = f"P99 TTFT floor {floor:.2f} s (prefill alone) exceeds the SLO at any fleet size"
            trials[(start,)] = [(TTFT,)]
            return self._outcome(res, (start,), [prof], [mu], False, reason, 1, trials), mu
        runs: dict[tuple[int, ...], SimResult] = {}

        def check(sizes: tuple[int, ...]) -> list[bool]:
            runs[sizes] = res = self.simulate_homogeneous(sizes[0])
            trials[sizes] = verdict = self._judge(res, [prof], [mu])
            return [not v for v in verdict]

        sized = size_pools(check, (start,), cap=self.s.max_instances)
        sizes, sims = sized.sizes, len(sized.trials)
        if sized.feasible:
            sizes, sims = self._verified(
                sizes, check, lambda s, wl: self.simulate_homogeneous(s[0], wl, "verify"), [prof], [mu], sims
            )
        res = runs.get(sizes) or self.simulate_homogeneous(sizes[0])
        return self._outcome(res, sizes, [prof], [mu], sized.feasible, sized.reason, sims, trials), mu

    def _verified(
        self,
        sizes: tuple[int, ...],
        check: Callable[[tuple[int, ...]], list[bool]],
        simulate: Callable[[tuple[int, ...], SimWorkload], SimResult],
        profiles: Sequence[InstanceProfile],
        mus: Sequence[float],
        sims: int,
    ) -> tuple[tuple[int, ...], int]:
        """Re-simulate the sized fleet on a resampled workload; grow any pool that misses its SLO
        there (by 2 %, at least one instance) until both samples pass. P99s of a finite run are
        noisy, and the smallest size that passed once sits right at the edge."""
        other = self.wl.resampled(_stream(self.s.seed, "verify"))
        for _ in range(8):
            fails = [bool(v) for v in self._judge(simulate(sizes, other), profiles, mus)]
            sims += 1
            if not any(fails):
                return sizes, sims
            sizes = tuple(n + max(1, math.ceil(0.02 * n)) if bad else n for n, bad in zip(sizes, fails, strict=True))
            passed = check(sizes)
            sims += 1
            sizes = tuple(n if ok else n + max(1, math.ceil(0.02 * n)) for n, ok in zip(sizes, passed, strict=True))
        return sizes, sims

    def size_dual(self, b_short: int, homogeneous: FleetOutcome, mu_h: float) -> ThresholdOutcome:
        s, wl = self.s, self.wl
        short = short_pool_at(s.profile.short, b_short)
        long = s.profile.long
        routed_short = self._offline_routing(b_short)
        alpha = alpha_at(wl.total, b_short)
        if not routed_short.any():
            return self._unsplit(b_short, alpha, homogeneous, f"the router sends no request short at B_short={b_short}")
        mu_s = self.mu(short, f"short@{b_short}", wl.subset(routed_short))
        long_wl = wl.subset(~routed_short) if (~routed_short).any() else wl
        mu_l = self.mu(long, f"long@{b_short}", long_wl)
        if not math.isfinite(mu_s):
            return self._unsplit(
                b_short, alpha, homogeneous, f"no request routed short fits the short context ({b_short} tokens)"
            )
        alpha_r = float(routed_short.mean())
        start = (
            max(1, instances_for(s.rate * alpha_r, mu_s, s.slo.util_cap)),
            max(1, instances_for(s.rate * (1 - alpha_r), mu_l, s.slo.util_cap)),
        )
        self._check_cap(f"dual fleet at B_short={b_short}", start)
        rho = mu_s / mu_h
        closed = closed_form_saving(alpha, rho)
        floors = [prefill_floor_p99(short, wl.subset(routed_short)), prefill_floor_p99(long, long_wl)]
        runs: dict[tuple[int, ...], tuple[SimResult, RouterDispatch]] = {}
        trials: dict[tuple[int, ...], list[tuple[str, ...]]] = {}
        profiles, mus = [short, long], [mu_s, mu_l]

        def check(sizes: tuple[int, ...]) -> list[bool]:
            runs[sizes] = out = self.simulate_dual(b_short, sizes[0], sizes[1])
            trials[sizes] = verdict = self._judge(out[0], profiles, mus)
            return [not v for v in verdict]

        if max(floors) > s.slo.ttft_p99_s:
            pool = "short" if floors[0] > s.slo.ttft_p99_s else "long"
            sizes, feasible, sims = start, False, 1
            reason = f"{pool} pool's P99 TTFT floor {max(floors):.2f} s (prefill alone) exceeds the SLO"
            trials[start] = [(TTFT,) if f > s.slo.ttft_p99_s else () for f in floors]
        else:
            sized = size_pools(check, start, cap=s.max_instances)
            sizes, feasible, reason, sims = sized.sizes, sized.feasible, sized.reason, len(sized.trials)
            if feasible:
                sizes, sims = self._verified(
                    sizes,
                    check,
                    lambda z, other: self.simulate_dual(b_short, z[0], z[1], other, "verify")[0],
                    profiles,
                    mus,
                    sims,
                )
                if sizes not in runs:
                    check(sizes)
        res, dispatch = runs.get(sizes) or self.simulate_dual(b_short, *sizes)
        dual = self._outcome(res, sizes, profiles, mus, feasible, reason, sims, trials)
        true_long = wl.total > b_short
        keep = measured_mask(res, s.warmup)
        rejected = int(np.sum(keep & (res.rejected != 0)))
        out = ThresholdOutcome(
            b_short=b_short,
            alpha=alpha,
            alpha_routed=float(np.mean(res.pool == 0)),
            mu_short=mu_s,
            mu_long=mu_l,
            rho=rho,
            closed_form_saving=closed,
            closed_form_gpus=homogeneous.gpus * (1.0 - closed) if math.isfinite(closed) else float("nan"),
            dual=dual,
            saving=(1.0 - dual.gpus / homogeneous.gpus) if (feasible and homogeneous.feasible) else None,
            misrouted_long_to_short=int(np.sum(true_long & (res.pool == 0))),
            spilled=int(dispatch.spilled.sum()),
            rejected=rejected,
            rejected_share=rejected / max(1, int(keep.sum())),
        )
        out.qualified, out.disqualified = self._qualify(out)
        return out

    def _qualify(self, t: ThresholdOutcome) -> tuple[bool, str]:
        if not t.dual.feasible:
            return False, "SLO not met: " + t.dual.reason
        if t.rejected_share > self.s.max_reject:
            return False, (
                f"rejects {100 * t.rejected_share:.2f} % of requests (under-estimated, over the short "
                f"context), above --max-reject {100 * self.s.max_reject:g} %"
            )
        return True, ""

    def _unsplit(self, b_short: int, alpha: float, homogeneous: FleetOutcome, reason: str) -> ThresholdOutcome:
        """A threshold at which there is nothing to split: reported, never sized or picked."""
        empty = FleetOutcome((0, 0), [0, 0], 0.0, False, reason, [], {}, 0, [], [], [])
        self._fleet_done()
        return ThresholdOutcome(
            b_short,
            alpha,
            0.0,
            float("nan"),
            float("nan"),
            float("nan"),
            float("nan"),
            float("nan"),
            empty,
            None,
            0,
            0,
            0,
            0.0,
            False,
            "not splittable: " + reason,
        )

    def _offline_routing(self, b_short: int) -> np.ndarray:
        """Which requests the router would send short, learning as it goes (no pressure): the split
        used to measure each pool's per-instance throughput and to start the size search."""
        wl = self.wl
        clock = SimClock()
        dispatch = RouterDispatch(self.router(b_short, 1, 1, clock, spillover=False), wl, clock)
        routed = np.empty(len(wl), dtype=bool)
        arrival = wl.arrival.tolist()
        for i in range(len(wl)):
            pool = dispatch.choose(i, arrival[i])
            routed[i] = pool == 0
            dispatch.finished(i, pool, True, arrival[i])
        return routed

    def run(self, thresholds: Sequence[int]) -> Replicate:
        check_thresholds(self.s.profile, thresholds)
        homogeneous, mu_h = self.size_homogeneous()
        self._fleet_done()
        outcomes = []
        for b in thresholds:
            outcome = self.size_dual(b, homogeneous, mu_h)
            if outcome.dual.simulations:
                self._fleet_done()
            outcomes.append(outcome)
        return Replicate(self.s.seed, len(self.wl), mu_h, homogeneous, outcomes)


def _binding(
    trials: dict[tuple[int, ...], list[tuple[str, ...]]], sizes: tuple[int, ...], feasible: bool, reason: str
) -> list[str]:
    """Per pool, the limit that sized it: what it missed at the largest failing size below its own
    (the utilisation floor when no smaller size was tried), or, for a fleet that never met its SLOs,
    what it missed at the size reported."""
    out = []
    for j, n in enumerate(sizes):
        if not feasible:
            at = trials.get(sizes)
            missed = at[j] if at else ()
            out.append("+".join(missed) if missed else ("none" if at else reason.split(":")[0]))
            continue
        below = [(s[j], v[j]) for s, v in trials.items() if s[j] < n and v[j]]
        out.append("+".join(max(below)[1]) if below else UTILISATION)
    return out


def check_thresholds(profile: FleetProfile, thresholds: Sequence[int]) -> None:
    """Fail before any simulation on a threshold no fleet can be built for."""
    if not thresholds:
        raise ValueError("give at least one B_short")
    for b in thresholds:
        if not 0 < b <= profile.long.max_model_len:
            raise ValueError(f"B_short {b} must be in 1..{profile.long.max_model_len} (the long pool's context)")
        short_pool_at(profile.short, b)


def _verdict(b_short: int, outcomes: Sequence[ThresholdOutcome]) -> ThresholdVerdict:
    bad = next((t for t in outcomes if not t.qualified), None)
    savings = [t.saving for t in outcomes]
    return ThresholdVerdict(
        b_short=b_short,
        qualified=bad is None,
        reason="" if bad is None else bad.disqualified,
        gpus=Spread(tuple(float(t.dual.gpus) for t in outcomes)),
        usd_per_year=Spread(tuple(t.dual.usd_per_year for t in outcomes)),
        saving=None if any(v is None for v in savings) else Spread(tuple(float(v) for v in savings)),
    )  # type: ignore[arg-type]


def choose(verdicts: Sequence[ThresholdVerdict], homogeneous_usd: Spread) -> tuple[int | None, list[int], str]:
    """The pick: the cheapest qualified threshold, unless another is within the spread of the two
    (then the smallest B_short among them: fewer requests ride on the long pool's few instances);
    none at all when the pick would not cost less than the homogeneous fleet."""
    qualified = [i for i, v in enumerate(verdicts) if v.qualified]
    if not qualified:
        return None, [], "no threshold qualifies"
    cheapest = min(qualified, key=lambda i: (verdicts[i].usd_per_year.mean, verdicts[i].b_short))
    best_usd = verdicts[cheapest].usd_per_year
    tied = [
        i
        for i in qualified
        if i != cheapest
        and verdicts[i].usd_per_year.mean - best_usd.mean <= max(verdicts[i].usd_per_year.width, best_usd.width)
    ]
    pick = min([cheapest, *tied], key=lambda i: verdicts[i].b_short)
    tied = sorted(i for i in [cheapest, *tied] if i != pick)
    usd = verdicts[pick].usd_per_year
    if usd.mean >= homogeneous_usd.mean:
        return (
            None,
            [],
            (
                f"no split pays off: the cheapest qualified dual fleet (B_short={verdicts[pick].b_short}) "
                "costs no less than the homogeneous fleet"
            ),
        )
    note = "cheapest meeting the SLOs"
    if tied:
        note = (
            f"tie within the spread of {len(verdicts[0].gpus.values)} replications with B_short="
            + ",".join(str(verdicts[i].b_short) for i in tied)
            + "; the smallest B_short is picked"
        )
    if homogeneous_usd.mean - usd.mean <= max(usd.width, homogeneous_usd.width):
        note += "; its saving is within the spread of the replications"
    return pick, tied, note


def plan(
    settings: PlanSettings,
    workloads: Sequence[tuple[int, SimWorkload]],
    thresholds: Sequence[int],
    trace: str,
    progress: PlanProgress | None = None,
    erlang: bool = True,
) -> PlanReport:
    """Size every fleet once per (seed, workload) replication and compare them across replications."""
    check_thresholds(settings.profile, thresholds)
    if not workloads:
        raise ValueError("give at least one workload")
    reps = [Planner(dataclasses.replace(settings, seed=seed), wl, progress).run(thresholds) for seed, wl in workloads]
    verdicts = [_verdict(b, [r.thresholds[i] for r in reps]) for i, b in enumerate(thresholds)]
    homog_usd = Spread(tuple(r.homogeneous.usd_per_year for r in reps))
    if not all(r.homogeneous.feasible for r in reps):
        homog_usd = Spread((math.inf,))  # an infeasible baseline: any qualified split is cheaper
    best, tied, note = choose(verdicts, homog_usd)
    checks = erlang_checks(settings) if erlang else []
    info = settings.as_dict()
    info["seeds"] = [seed for seed, _ in workloads]
    return PlanReport(
        info,
        trace,
        reps,
        Spread(tuple(float(r.homogeneous.gpus) for r in reps)),
        Spread(tuple(r.homogeneous.usd_per_year for r in reps)),
        verdicts,
        best,
        tied,
        note,
        checks,
    )


def erlang_checks(settings: PlanSettings) -> list[ErlangComparison]:
    """The simulator against Erlang C on the batch slots of this profile's pools."""
    pools = {"short": settings.profile.short, "long": settings.profile.long, "homogeneous": settings.homogeneous}
    seen: set[tuple[int, float]] = set()
    out = []
    for name, prof in pools.items():
        key = (prof.max_num_seqs, prof.iter_fixed_s + prof.iter_per_seq_s * prof.max_num_seqs)
        if key in seen:
            continue
        seen.add(key)
        out.append(erlang_comparison(name, prof, _stream(settings.seed, "erlang", name)))
    return out
