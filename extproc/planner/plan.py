"""Does a dual-pool split pay off for this traffic? Size both fleets by simulation and compare.

Two comparisons, each like for like (the same SLOs, balancer and step-cost model on both sides):

- **tuned** (the default): every pool — the homogeneous fleet's, and the short and long pool at each
  ``B_short`` — runs the ``max_num_seqs`` and ``max_num_batched_tokens`` a search found cheapest for its
  own traffic under the SLOs (``tuning``), with vLLM's on-demand KV blocks, so a pool provisioned above
  the worst case can preempt. This is the fleet an operator could run without the router.
- **paper**: the paper's worst-case reservation (KV cache / context sequences: 16 at 64K, 128 at 8K) and
  its fixed chunk sizes, as the profile states them: the comparison the paper made.

Configurations are chosen on the first replication (seed); every fleet is then sized on every
replication's workload (100,000 requests by default), the same SLOs for every pool and for the fleet.
A pool that sees too few requests for a P99 (the long pool when B_short covers almost everything) is
judged on a longer run of its own traffic and flagged low-confidence. The spread across replications
is the precision of the answer: a threshold is picked over another only when it is cheaper by more.
"""

from __future__ import annotations

import dataclasses
import math
import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from extproc import __version__
from extproc.algorithm import BudgetRouter, LivePressure
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.config import Config, with_options
from extproc.planner import runner
from extproc.planner.capacity import (
    ErlangComparison,
    alpha_at,
    closed_form_saving,
    erlang_comparison,
    instances_for,
    prefill_floor_p99,
    saturated_throughput,
    short_pool_at,
)
from extproc.planner.fleet import BALANCERS, LEAST_REQUEST, FleetSim, PoolConfig, SimResult
from extproc.planner.profiles import FleetProfile, InstanceProfile
from extproc.planner.routing import SCRAPE_INTERVAL_S, RouterDispatch, SimClock
from extproc.planner.service_levels import (
    TTFT,
    UTILISATION,
    PoolMetrics,
    Slo,
    fleet_meets,
    fleet_percentiles,
    latency_cdf,
    measured_mask,
    summarise,
)
from extproc.planner.sim_workload import SimWorkload
from extproc.planner.sizing import size_pools
from extproc.planner.tuning import (
    DEFAULT_CHUNKS,
    SCREEN_FLEET,
    SCREEN_REQUESTS,
    Candidate,
    Screen,
    Search,
    screen,
    search,
    seqs_grid,
)
from extproc.router_factory import build_router

HOURS_PER_YEAR = 8760.0
MIN_CONFIDENT_REQUESTS = 10_000  # fewer measured in a pool: judged on a longer run of its own traffic
DEFAULT_MAX_INSTANCES = 20_000  # per pool: the simulator holds every instance in memory
TUNED, PAPER = "tuned", "paper"
PROVISIONINGS = (TUNED, PAPER)
FLEET_SLO = "fleet P99"


@dataclass(frozen=True)
class PlanSettings:
    """Every option of a plan and its default, in one place (the CLI reads its defaults from here)."""

    profile: FleetProfile
    rate: float
    slo: Slo = field(default_factory=Slo)
    warmup: float = 0.1
    balancer: str = LEAST_REQUEST
    homogeneous_balancer: str | None = None  # None: the pools' balancer, so the comparison is like for like
    baselines: tuple[str, ...] = (TUNED,)
    chunks: tuple[int, ...] = DEFAULT_CHUNKS
    max_seqs: int = 1024
    spillover: bool | None = None  # None: the config's spillover.enabled
    scrape_delay_s: float | None = None  # live-load spillover with this staleness; None: exact in-flight count
    seed: int = 0
    max_reject: float = 0.001  # share of requests a pick may lose to over-context rejections
    max_instances: int = DEFAULT_MAX_INSTANCES
    min_confident_requests: int = MIN_CONFIDENT_REQUESTS
    screen_requests: int = SCREEN_REQUESTS
    screen_fleet: int = SCREEN_FLEET
    equal_gpus: bool = True
    sensitivity: bool = True
    erlang: bool = True
    jobs: int = 1
    # The router's settings, as ``serve`` reads them; the plan overrides only B_short, the pool
    # contexts and capacities (from the fleet it sizes) and, when set, spillover.
    config: Config = field(default_factory=Config)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError("rate must be > 0 req/s")
        for b in (self.balancer, self.homogeneous_balancer):
            if b is not None and b not in BALANCERS:
                raise ValueError(f"unknown balancer {b!r}; choose from {', '.join(BALANCERS)}")
        if not self.baselines or any(b not in PROVISIONINGS for b in self.baselines):
            raise ValueError(f"baselines must be among {', '.join(PROVISIONINGS)}")
        if not self.chunks or any(c < 1 for c in self.chunks):
            raise ValueError("chunk sizes must be positive token counts")
        if not 0.0 <= self.warmup < 0.9:
            raise ValueError("warmup must be in [0, 0.9)")

    @property
    def spills(self) -> bool:
        return self.config.spillover.enabled if self.spillover is None else self.spillover

    @property
    def baseline_balancer(self) -> str:
        return self.homogeneous_balancer or self.balancer

    @property
    def like_for_like(self) -> bool:
        return self.baseline_balancer == self.balancer

    def as_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile.name,
            "fitted_to": self.profile.fitted_to,
            "rate": self.rate,
            "slo": dataclasses.asdict(self.slo),
            "slo_text": self.slo.describe(),
            "warmup": self.warmup,
            "balancer": self.balancer,
            "homogeneous_balancer": self.baseline_balancer,
            "baseline": "like-for-like"
            if self.like_for_like
            else f"MISMATCHED: homogeneous {self.baseline_balancer}, pools {self.balancer}",
            "baselines": list(self.baselines),
            "chunks": list(self.chunks),
            "max_seqs": self.max_seqs,
            "spillover": self.spills,
            "scrape_delay_s": self.scrape_delay_s,
            "seed": self.seed,
            "max_reject": self.max_reject,
            "max_instances": self.max_instances,
            "min_confident_requests": self.min_confident_requests,
            "screen_requests": self.screen_requests,
            "screen_fleet": self.screen_fleet,
            "counts": f"requests and rejections after the first {self.warmup:.0%} (warm-up) of each run",
        }


@dataclass
class FleetOutcome:
    """A sized fleet and how it behaved at that size."""

    provisioning: str
    instances: tuple[int, ...]
    pool_gpus: list[int]
    usd_per_year: float
    feasible: bool
    reason: str
    pools: list[PoolMetrics]
    fleet: dict[str, float]
    fleet_meets_slo: bool
    simulations: int
    offered_utilisation: list[float]  # per pool: its arrival rate / (instances x saturated throughput)
    binding: list[str]  # per pool: the limit that sized it (UTILISATION, TTFT, TPOT, ITL, rejections)
    low_confidence: list[bool]  # per pool: fewer than min_confident_requests measured in the fleet run
    judged_on: list[str]  # per pool: the fleet run, or its own longer stream
    own_stream: list[PoolMetrics | None]  # per pool judged on its own stream: its figures there
    configs: list[dict[str, int]]
    usd_per_million_tokens: float
    usd_per_million_output_tokens: float
    cdf: dict[str, list[float]]

    @property
    def gpus(self) -> int:
        return sum(self.pool_gpus)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("pools", "own_stream")}
        out["instances"] = list(self.instances)
        out["gpus"] = self.gpus
        out["pools"] = [p.as_dict() for p in self.pools]
        out["own_stream"] = [None if p is None else p.as_dict() for p in self.own_stream]
        return out


@dataclass
class ThresholdOutcome:
    b_short: int
    provisioning: str
    alpha: float  # F(B_short) over true totals
    alpha_routed: float  # share the router actually sent short in the sized run
    mu_short: float
    mu_long: float
    mu_homogeneous: float
    rho: float  # mu_short / mu_homogeneous, as the closed form defines it
    closed_form_saving: float
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
class EqualGpu:
    """Both sides at one fleet size (the homogeneous fleet's GPUs), the dual fleet split between its
    pools in the proportion it was sized to: the test of the paper's latency and reliability claims."""

    b_short: int
    provisioning: str
    gpus: int
    homogeneous_instances: tuple[int, ...]
    dual_instances: tuple[int, ...]
    homogeneous: dict[str, float]
    dual: dict[str, float]
    dual_pools: list[PoolMetrics]

    def as_dict(self) -> dict[str, Any]:
        return {
            "b_short": self.b_short,
            "provisioning": self.provisioning,
            "gpus": self.gpus,
            "homogeneous_instances": list(self.homogeneous_instances),
            "dual_instances": list(self.dual_instances),
            "homogeneous": self.homogeneous,
            "dual": self.dual,
            "dual_pools": [p.as_dict() for p in self.dual_pools],
        }


@dataclass
class Replicate:
    """Every fleet sized on one draw of the workload."""

    seed: int
    requests: int
    homogeneous: dict[str, FleetOutcome]  # by provisioning
    thresholds: dict[str, list[ThresholdOutcome]]
    equal_gpu: list[EqualGpu] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "requests": self.requests,
            "homogeneous": {k: v.as_dict() for k, v in self.homogeneous.items()},
            "thresholds": {k: [t.as_dict() for t in v] for k, v in self.thresholds.items()},
            "equal_gpu": [e.as_dict() for e in self.equal_gpu],
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
class Comparison:
    """One provisioning's answer across replications: the homogeneous fleet against each threshold."""

    provisioning: str
    homogeneous_gpus: Spread
    homogeneous_usd: Spread
    verdicts: list[ThresholdVerdict]
    best: int | None  # index into the thresholds of the pick; None when no split qualifies and pays off
    tied: list[int]
    pick_note: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "provisioning": self.provisioning,
            "homogeneous_gpus": self.homogeneous_gpus.as_dict(),
            "homogeneous_usd_per_year": self.homogeneous_usd.as_dict(),
            "verdicts": [v.as_dict() for v in self.verdicts],
            "best_b_short": None if self.best is None else self.verdicts[self.best].b_short,
            "tied_with_best": [self.verdicts[i].b_short for i in self.tied],
            "pick_note": self.pick_note,
        }


@dataclass(frozen=True)
class SensitivityRow:
    """The saving (screening estimate) with one knob moved from the plan's choice."""

    knob: str
    value: str
    homogeneous_gpus: float
    dual_gpus: float
    note: str = ""

    @property
    def saving(self) -> float:
        if not (math.isfinite(self.homogeneous_gpus) and math.isfinite(self.dual_gpus)) or self.homogeneous_gpus <= 0:
            return math.nan
        return 1.0 - self.dual_gpus / self.homogeneous_gpus

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "saving": self.saving}


@dataclass
class PlanReport:
    settings: dict[str, Any]
    trace: str
    thresholds: list[int]
    replicates: list[Replicate]
    comparisons: dict[str, Comparison]
    tuning: dict[str, Search]
    sensitivity: list[SensitivityRow]
    sensitivity_b_short: int | None
    erlang: list[ErlangComparison]
    version: str = __version__

    @property
    def primary(self) -> str:
        return TUNED if TUNED in self.comparisons else PAPER

    @property
    def requests(self) -> int:
        return self.replicates[0].requests

    def as_dict(self) -> dict[str, Any]:
        primary = self.comparisons[self.primary]
        return {
            "version": self.version,
            "settings": self.settings,
            "trace": self.trace,
            "requests": self.requests,
            "replications": len(self.replicates),
            "primary": self.primary,
            "best_b_short": None if primary.best is None else primary.verdicts[primary.best].b_short,
            "comparisons": {k: v.as_dict() for k, v in self.comparisons.items()},
            "tuning": {k: v.as_dict() for k, v in self.tuning.items()},
            "sensitivity": {
                "b_short": self.sensitivity_b_short,
                "method": "screening estimates (scaled fleets, first seed), configurations held at the plan's "
                "choice unless the knob is the configuration",
                "rows": [r.as_dict() for r in self.sensitivity],
            },
            "oom": "not an event in this model: vLLM's paged KV cache preempts (counted) rather than running out "
            "of memory, and vLLM refuses to start when max_model_len exceeds the KV cache",
            "erlang_c_check": [e.as_dict() for e in self.erlang],
            "replicates": [r.as_dict() for r in self.replicates],
        }


def usd_per_year(pools: Sequence[tuple[InstanceProfile, int]]) -> float:
    return sum(prof.usd_per_hour * n for prof, n in pools) * HOURS_PER_YEAR


def stream(seed: int, *key: object) -> np.random.Generator:
    """A random stream of its own for each named use, so that adding a threshold to a sweep (or a
    fleet to a plan, or running on more worker processes) leaves every other draw as it was."""
    return np.random.default_rng([seed, *(zlib.crc32(str(k).encode()) for k in key)])


def _seed_of(seed: int, *key: object) -> int:
    return int(stream(seed, *key).integers(2**31))


# --- the pools of a plan --------------------------------------------------------------------------


def base_profile(profile: FleetProfile, role: str, b_short: int | None) -> InstanceProfile:
    """The paper's configuration of a pool: the homogeneous and long pools as the profile's long one,
    the short pool at B_short with as many sequences as the KV cache holds at that context."""
    if role == "short":
        assert b_short is not None
        return short_pool_at(profile.short, b_short)
    return profile.long


def configured(profile: FleetProfile, role: str, b_short: int | None, choice: Candidate | None) -> InstanceProfile:
    base = base_profile(profile, role, b_short)
    if choice is None or (choice.seqs, choice.chunk) == (base.max_num_seqs, base.max_num_batched_tokens):
        return base
    return base.tuned(choice.seqs, choice.chunk)


def _config_of(p: InstanceProfile, provisioning: str) -> dict[str, Any]:
    return {
        "max_model_len": p.max_model_len,
        "max_num_seqs": p.max_num_seqs,
        "max_num_batched_tokens": p.max_num_batched_tokens,
        "worst_case_seqs": p.worst_case_seqs,
        "provisioning": provisioning,
    }


class Planner:
    """Simulates and sizes the fleets of one replication (one workload draw)."""

    def __init__(self, settings: PlanSettings, wl: SimWorkload, seed: int | None = None) -> None:
        long_ctx = settings.profile.long.max_model_len
        if not (wl.total <= long_ctx).any():
            raise ValueError(
                f"no request of the trace fits the long pool's context ({long_ctx:,} tokens): every "
                "one would be rejected, so there is nothing to size"
            )
        self.s = settings
        self.seed = settings.seed if seed is None else seed
        self.wl = wl
        self._mu: dict[tuple[str, str], float] = {}
        self._routed: dict[int, np.ndarray] = {}
        self._own: dict[tuple[object, ...], SimWorkload] = {}

    # --- building blocks -------------------------------------------------------------------
    def mu(self, profile: InstanceProfile, traffic: str, wl: SimWorkload) -> float:
        key = (profile.name, traffic)
        if key not in self._mu:
            self._mu[key] = saturated_throughput(profile, wl, stream(self.seed, "mu", *key))
        return self._mu[key]

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
        rng = random.Random(int(stream(self.seed, "router", b_short).integers(2**63)))
        return build_router(cfg, clock, rng, pressure)

    def offline_routing(self, b_short: int) -> np.ndarray:
        """Which requests the router would send short, learning as it goes (no pressure): the split
        used to measure each pool's throughput, to screen its configurations and to start the sizing."""
        if b_short not in self._routed:
            wl = self.wl
            clock = SimClock()
            dispatch = RouterDispatch(self.router(b_short, 1, 1, clock, spillover=False), wl, clock)
            routed = np.empty(len(wl), dtype=bool)
            arrival = wl.arrival.tolist()
            for i in range(len(wl)):
                pool = dispatch.choose(i, arrival[i])
                routed[i] = pool == 0
                dispatch.finished(i, pool, True, arrival[i])
            self._routed[b_short] = routed
        return self._routed[b_short]

    def traffic(self, role: str, b_short: int | None) -> SimWorkload:
        """The requests a pool serves: everything for the homogeneous fleet, else the offline split."""
        if role == "homogeneous":
            return self.wl
        assert b_short is not None
        routed = self.offline_routing(b_short)
        return self.wl.subset(routed if role == "short" else ~routed)

    def share(self, role: str, b_short: int | None) -> float:
        return len(self.traffic(role, b_short)) / len(self.wl)

    def simulate(
        self,
        profiles: Sequence[InstanceProfile],
        sizes: Sequence[int],
        b_short: int | None,
        wl: SimWorkload | None = None,
        label: str = "",
        pool_only: bool = False,
    ) -> tuple[SimResult, RouterDispatch | None]:
        """One fleet run: a homogeneous pool (``b_short`` None), one dual pool alone (``pool_only``) or
        the two pools behind the router."""
        wl = wl or self.wl
        runner.report_sim(f"seed {self.seed}: {label or 'x'.join(map(str, sizes))}")
        sim_seed = _seed_of(self.seed, "balance", b_short, *(p.name for p in profiles))
        if b_short is None or pool_only:
            balancer = self.s.balancer if pool_only else self.s.baseline_balancer
            cfg = PoolConfig("homogeneous" if not pool_only else "pool", profiles[0], sizes[0], balancer)
            return FleetSim([cfg]).run(wl, warmup=self.s.warmup, seed=sim_seed), None
        clock = SimClock()
        slots = (sizes[0] * profiles[0].max_num_seqs, sizes[1] * profiles[1].max_num_seqs)
        router = self.router(b_short, *slots, clock, live=True)
        dispatch = RouterDispatch(router, wl, clock, self.s.scrape_delay_s, SCRAPE_INTERVAL_S)
        pools = [
            PoolConfig("short", profiles[0], sizes[0], self.s.balancer),
            PoolConfig("long", profiles[1], sizes[1], self.s.balancer),
        ]
        return FleetSim(pools, dispatch).run(wl, warmup=self.s.warmup, seed=sim_seed), dispatch

    def simulate_homogeneous(
        self, n: int, profile: InstanceProfile | None = None, wl: SimWorkload | None = None
    ) -> SimResult:
        return self.simulate([profile or self.s.profile.long], [n], None, wl)[0]

    def simulate_dual(
        self,
        b_short: int,
        n_short: int,
        n_long: int,
        profiles: Sequence[InstanceProfile] | None = None,
        wl: SimWorkload | None = None,
    ) -> tuple[SimResult, RouterDispatch]:
        profs = profiles or [base_profile(self.s.profile, "short", b_short), self.s.profile.long]
        res, dispatch = self.simulate(profs, [n_short, n_long], b_short, wl)
        assert dispatch is not None
        return res, dispatch

    def own_stream(self, role: str, b_short: int | None) -> SimWorkload:
        """A pool's own traffic, long enough for its P99s: its requests resampled (sizes with their
        bytes) into ``min_confident_requests`` measured arrivals at its share of the rate."""
        key = (role, b_short)
        if key not in self._own:
            traffic = self.traffic(role, b_short)
            n = math.ceil(self.s.min_confident_requests / (1.0 - self.s.warmup))
            rate = self.s.rate * len(traffic) / len(self.wl)
            self._own[key] = traffic.resampled(stream(self.seed, "own", role, b_short), n=n, rate=rate)
        return self._own[key]

    # --- sizing ----------------------------------------------------------------------------
    def size(
        self,
        provisioning: str,
        b_short: int | None,
        profiles: Sequence[InstanceProfile],
        hints: Sequence[float | None] | None = None,
    ) -> tuple[FleetOutcome, SimResult, RouterDispatch | None, list[float]]:
        """The fewest instances per pool meeting the SLOs (each pool and the fleet), on this workload."""
        s = self.s
        roles = ["homogeneous"] if b_short is None else ["short", "long"]
        traffics = [self.traffic(r, b_short) for r in roles]
        rates = [s.rate * len(t) / len(self.wl) for t in traffics]
        mus = [
            self.mu(p, f"{r}@{b_short}", t) if len(t) else math.nan
            for p, r, t in zip(profiles, roles, traffics, strict=True)
        ]
        floors = [
            max(1, instances_for(rate, mu, s.slo.util_cap)) if len(t) and math.isfinite(mu) else 1
            for rate, mu, t in zip(rates, mus, traffics, strict=True)
        ]
        hints = hints or [None] * len(roles)
        start = [
            max(f, math.ceil(h - 1e-9)) if h is not None and math.isfinite(h) else f
            for f, h in zip(floors, hints, strict=True)
        ]
        what = "homogeneous fleet" if b_short is None else f"dual fleet at B_short={b_short}"
        if max(floors) > s.max_instances:
            raise ValueError(
                f"at {s.rate:g} req/s the {what} needs at least {max(floors):,} instances in one pool (its "
                f"utilisation floor), above --max-instances {s.max_instances:,}: lower --rate, or raise the "
                "cap if this machine has the memory"
            )
        start = [min(x, s.max_instances) for x in start]
        small = [
            bool(len(t)) and len(t) * (1.0 - s.warmup) < s.min_confident_requests and b_short is not None
            for t in traffics
        ]
        own_cache: dict[tuple[int, int], tuple[tuple[str, ...], PoolMetrics]] = {}

        def own_judge(j: int, n: int) -> tuple[tuple[str, ...], PoolMetrics]:
            if (j, n) not in own_cache:
                wl_j = self.own_stream(roles[j], b_short)
                res = self.simulate([profiles[j]], [n], b_short, wl_j, f"{roles[j]} pool x{n} (own stream)", True)[0]
                pm = dataclasses.replace(summarise(res)[0], pool=roles[j])
                own_cache[(j, n)] = (pm.failures(s.slo), pm)
            return own_cache[(j, n)]

        trials: dict[tuple[int, ...], list[tuple[str, ...]]] = {}
        runs: dict[tuple[int, ...], tuple[SimResult, RouterDispatch | None]] = {}

        def judge(sizes: tuple[int, ...], res: SimResult) -> list[tuple[str, ...]]:
            pms = summarise(res)
            verdict = [own_judge(j, sizes[j])[0] if small[j] else pms[j].failures(s.slo) for j in range(len(roles))]
            if not any(verdict) and not fleet_meets(fleet_percentiles(res), s.slo):
                # the pools pass on their own streams but the fleet's P99 does not: hold the pools whose
                # fleet-run figures miss to it
                verdict = [(FLEET_SLO,) if pm.failures(s.slo) else () for pm in pms]
                if not any(verdict):
                    verdict = [(FLEET_SLO,)] * len(roles)
            return verdict

        def check(sizes: tuple[int, ...]) -> list[bool]:
            runs[sizes] = out = self.simulate(profiles, sizes, b_short)
            trials[sizes] = verdict = judge(sizes, out[0])
            return [not v for v in verdict]

        floors_p99 = [prefill_floor_p99(p, t) if len(t) else 0.0 for p, t in zip(profiles, traffics, strict=True)]
        if max(floors_p99) > s.slo.ttft_p99_s:
            j = int(np.argmax(floors_p99))
            sizes, feasible, sims = tuple(start), False, 1
            reason = (
                f"{roles[j]} pool's P99 TTFT floor {floors_p99[j]:.2f} s (prefill alone) exceeds the SLO at any size"
            )
            check(sizes)
            trials[sizes] = [(TTFT,) if f > s.slo.ttft_p99_s else () for f in floors_p99]
        else:
            hinted = any(h is not None for h in hints)
            sized = size_pools(
                check,
                tuple(start),
                floor=tuple(floors),
                cap=s.max_instances,
                tolerance=0.01,
                first_step=0.03 if hinted else 0.1,
            )
            sizes, feasible, reason, sims = sized.sizes, sized.feasible, sized.reason, len(sized.trials)
            if feasible:
                sizes, sims = self._verified(sizes, check, profiles, b_short, judge, sims)
        if sizes not in runs:
            check(sizes)
            sims += 1
        res, dispatch = runs[sizes]
        pools = summarise(res)
        fleet = fleet_percentiles(res)
        shares = [float(np.mean(res.pool == j)) for j in range(len(roles))]
        offered = [s.rate * f / (n * mu) if mu > 0 else math.nan for f, n, mu in zip(shares, sizes, mus, strict=True)]
        mean_tokens = float(np.mean(self.wl.total))
        mean_out = float(np.mean(self.wl.output))
        usd_h = sum(p.usd_per_hour * n for p, n in zip(profiles, sizes, strict=True))
        outcome = FleetOutcome(
            provisioning=provisioning,
            instances=tuple(sizes),
            pool_gpus=[p.gpus * n for p, n in zip(profiles, sizes, strict=True)],
            usd_per_year=usd_h * HOURS_PER_YEAR,
            feasible=feasible,
            reason=reason,
            pools=pools,
            fleet=fleet,
            fleet_meets_slo=fleet_meets(fleet, s.slo),
            simulations=sims,
            offered_utilisation=offered,
            binding=_binding(trials, sizes, feasible, reason),
            low_confidence=[pm.requests < s.min_confident_requests for pm in pools] if b_short is not None else [False],
            judged_on=[
                f"own stream of {len(self.own_stream(roles[j], b_short)):,} requests resampled from "
                f"{len(traffics[j]):,} ({_distinct_sizes(traffics[j]):,} distinct sizes)"
                if small[j]
                else "fleet run"
                for j in range(len(roles))
            ],
            own_stream=[own_judge(j, sizes[j])[1] if small[j] else None for j in range(len(roles))],
            configs=[_config_of(p, provisioning) for p in profiles],
            usd_per_million_tokens=usd_h / (s.rate * 3600.0 * mean_tokens / 1e6),
            usd_per_million_output_tokens=usd_h / (s.rate * 3600.0 * mean_out / 1e6),
            cdf=latency_cdf(res),
        )
        return outcome, res, dispatch, mus

    def _verified(
        self,
        sizes: tuple[int, ...],
        check: Any,
        profiles: Sequence[InstanceProfile],
        b_short: int | None,
        judge: Any,
        sims: int,
    ) -> tuple[tuple[int, ...], int]:
        """Re-simulate the sized fleet on a resampled workload; grow any pool that misses its SLO
        there (by 2 %, at least one instance) until both samples pass. P99s of a finite run are
        noisy, and the smallest size that passed once sits right at the edge."""
        other = self.wl.resampled(stream(self.seed, "verify"))
        for _ in range(8):
            res, _ = self.simulate(profiles, sizes, b_short, other, label="verify " + "+".join(map(str, sizes)))
            fails = [bool(v) for v in judge(sizes, res)]
            sims += 1
            if not any(fails):
                return sizes, sims
            sizes = tuple(n + max(1, math.ceil(0.02 * n)) if bad else n for n, bad in zip(sizes, fails, strict=True))
            passed = check(sizes)
            sims += 1
            sizes = tuple(n if ok else n + max(1, math.ceil(0.02 * n)) for n, ok in zip(sizes, passed, strict=True))
        return sizes, sims

    def threshold(
        self,
        provisioning: str,
        b_short: int,
        profiles: Sequence[InstanceProfile],
        hints: Sequence[float | None] | None = None,
        homogeneous: InstanceProfile | None = None,
    ) -> ThresholdOutcome:
        """Size the dual fleet at ``b_short``; ``homogeneous`` (default: the paper's) is the baseline
        configuration whose μ the closed form's ρ divides by."""
        s, wl = self.s, self.wl
        alpha = alpha_at(wl.total, b_short)
        routed_short = self.offline_routing(b_short)
        if not routed_short.any():
            return _unsplit(provisioning, b_short, alpha, f"the router sends no request short at B_short={b_short}")
        if not (self.traffic("short", b_short).total <= b_short).any():
            return _unsplit(
                provisioning, b_short, alpha, f"no request routed short fits the short context ({b_short} tokens)"
            )
        dual, res, dispatch, mus = self.size(provisioning, b_short, profiles, hints)
        assert dispatch is not None
        mu_h = self.mu(homogeneous or s.profile.long, "homogeneous@None", wl)
        rho = mus[0] / mu_h
        keep = measured_mask(res)
        rejected = int(np.sum(keep & (res.rejected != 0)))
        out = ThresholdOutcome(
            b_short=b_short,
            provisioning=provisioning,
            alpha=alpha,
            alpha_routed=float(np.mean(res.pool == 0)),
            mu_short=mus[0],
            mu_long=mus[1],
            mu_homogeneous=mu_h,
            rho=rho,
            closed_form_saving=closed_form_saving(alpha, rho) if math.isfinite(rho) and rho > 0 else math.nan,
            dual=dual,
            saving=None,
            misrouted_long_to_short=int(np.sum((wl.total > b_short) & (res.pool == 0))),
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

    def equal_gpu(
        self,
        provisioning: str,
        b_short: int,
        profiles: Sequence[InstanceProfile],
        homogeneous: FleetOutcome,
        homogeneous_profile: InstanceProfile,
        dual: FleetOutcome,
    ) -> EqualGpu:
        """The dual fleet given the homogeneous fleet's GPUs, split in the proportion it was sized to."""
        gpus = homogeneous.gpus
        n_short, n_long = split_gpus(gpus, dual.pool_gpus, [p.gpus for p in profiles])
        res, _ = self.simulate(profiles, (n_short, n_long), b_short, label=f"equal GPUs {n_short}+{n_long}")
        return EqualGpu(
            b_short=b_short,
            provisioning=provisioning,
            gpus=gpus,
            homogeneous_instances=homogeneous.instances,
            dual_instances=(n_short, n_long),
            homogeneous=homogeneous.fleet,
            dual=fleet_percentiles(res),
            dual_pools=summarise(res),
        )


def split_gpus(gpus: int, sized_pool_gpus: Sequence[int], gpus_per_instance: Sequence[int]) -> tuple[int, int]:
    """Instances of the short and long pool that fit in ``gpus``, split in the proportion the dual
    fleet was sized to (each pool at least one instance): the equal-GPU comparison's dual fleet."""
    per = gpus_per_instance
    share = sized_pool_gpus[0] / max(1, sum(sized_pool_gpus))
    n_short = max(1, round(gpus * share / per[0]))
    n_long = max(1, (gpus - n_short * per[0]) // per[1])
    if n_short * per[0] + n_long * per[1] > gpus and n_short > 1:
        n_short -= 1
    return n_short, n_long


def _distinct_sizes(wl: SimWorkload) -> int:
    """How many different (prompt, output) pairs a pool's traffic holds: how much its tail rests on."""
    return len(set(zip(wl.prompt.tolist(), wl.output.tolist(), strict=True)))


def _unsplit(provisioning: str, b_short: int, alpha: float, reason: str) -> ThresholdOutcome:
    """A threshold at which there is nothing to split: reported, never sized or picked."""
    empty = FleetOutcome(
        provisioning,
        (0, 0),
        [0, 0],
        0.0,
        False,
        reason,
        [],
        {},
        False,
        0,
        [],
        [],
        [],
        [],
        [],
        [],
        math.nan,
        math.nan,
        {},
    )
    nan = math.nan
    return ThresholdOutcome(
        b_short,
        provisioning,
        alpha,
        0.0,
        nan,
        nan,
        nan,
        nan,
        nan,
        empty,
        None,
        0,
        0,
        0,
        0.0,
        False,
        "not splittable: " + reason,
    )


def _binding(
    trials: dict[tuple[int, ...], list[tuple[str, ...]]], sizes: tuple[int, ...], feasible: bool, reason: str
) -> list[str]:
    """Per pool, the limit that sized it: what it missed at the largest failing size below its own
    (the utilisation floor when no smaller size failed), or, for a fleet that never met its SLOs,
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
        saving=None if any(v is None for v in savings) else Spread(tuple(float(v) for v in savings)),  # type: ignore[arg-type]
    )


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


# --- the plan's tasks (module-level: they run on worker processes) ----------------------------------


@dataclass
class _Context:
    settings: PlanSettings
    workloads: list[tuple[int, SimWorkload]]
    planners: dict[int, Planner] = field(default_factory=dict)

    def planner(self, k: int) -> Planner:
        if k not in self.planners:
            seed, wl = self.workloads[k]
            self.planners[k] = Planner(dataclasses.replace(self.settings, seed=seed), wl, seed)
        return self.planners[k]


Role = tuple[str, int | None]  # ("homogeneous", None), ("short", 8192), ("long", 8192)


def _role_name(role: Role) -> str:
    return role[0] if role[1] is None else f"{role[0]}@{role[1]}"


def _screen(
    pl: Planner,
    role: Role,
    prof: InstanceProfile,
    hint: float | None = None,
    settings: PlanSettings | None = None,
) -> Screen:
    s = settings or pl.s
    traffic = pl.traffic(*role)
    balancer = s.baseline_balancer if role[0] == "homogeneous" else s.balancer
    rng = stream(pl.seed, "screen", _role_name(role), prof.name, s.slo, s.balancer, s.baseline_balancer)
    return screen(
        prof,
        traffic,
        s.rate * len(traffic) / len(pl.wl),
        s.slo,
        rng,
        balancer=balancer,
        warmup=s.warmup,
        requests=s.screen_requests,
        fleet=s.screen_fleet,
        seed=_seed_of(pl.seed, "screen-balance", prof.name),
        hint=hint,
        on_sim=runner.report_sim,
    )


def _search_task(role: Role) -> Search:
    ctx: _Context = runner.context()
    pl = ctx.planner(0)
    base = base_profile(ctx.settings.profile, *role)
    traffic = pl.traffic(*role)
    seqs = seqs_grid(base, traffic, ctx.settings.max_seqs)
    chunks = tuple(sorted(set(ctx.settings.chunks)))
    best: list[float] = []

    def evaluate(cands: Sequence[Candidate]) -> list[Screen]:
        out = []
        for c in cands:
            hint = min(best) if best else None
            sc = _screen(pl, role, base.tuned(c.seqs, c.chunk), hint)
            if sc.feasible:
                best.append(sc.instances)
            out.append(sc)
        return out

    return search(evaluate, seqs, chunks, full_lines=ctx.settings.sensitivity)


@dataclass(frozen=True)
class _SizeJob:
    k: int  # replication index
    provisioning: str
    b_short: int | None
    configs: tuple[Candidate | None, ...]
    hints: tuple[float | None, ...]
    homogeneous: Candidate | None = None  # the baseline's configuration, for the closed form's ρ


def _size_task(job: _SizeJob) -> FleetOutcome | ThresholdOutcome:
    ctx: _Context = runner.context()
    pl = ctx.planner(job.k)
    prof = ctx.settings.profile
    if job.b_short is None:
        p = configured(prof, "homogeneous", None, job.configs[0])
        return pl.size(job.provisioning, None, [p], list(job.hints))[0]
    profiles = [
        configured(prof, "short", job.b_short, job.configs[0]),
        configured(prof, "long", job.b_short, job.configs[1]),
    ]
    homog = configured(prof, "homogeneous", None, job.homogeneous)
    return pl.threshold(job.provisioning, job.b_short, profiles, list(job.hints), homog)


@dataclass(frozen=True)
class _EqualJob:
    k: int
    provisioning: str
    b_short: int
    configs: tuple[Candidate | None, Candidate | None, Candidate | None]  # homogeneous, short, long
    homogeneous: FleetOutcome
    dual: FleetOutcome


def _equal_task(job: _EqualJob) -> EqualGpu:
    ctx: _Context = runner.context()
    prof = ctx.settings.profile
    homog = configured(prof, "homogeneous", None, job.configs[0])
    profiles = [
        configured(prof, "short", job.b_short, job.configs[1]),
        configured(prof, "long", job.b_short, job.configs[2]),
    ]
    return ctx.planner(job.k).equal_gpu(job.provisioning, job.b_short, profiles, job.homogeneous, homog, job.dual)


@dataclass(frozen=True)
class _KnobJob:
    knob: str
    value: str
    b_short: int
    configs: tuple[Candidate | None, ...]  # (homogeneous, short, long)
    settings: PlanSettings
    strip_allreduce: bool = False
    # per pool, the plan's screened size to start from: a pool sized six times its utilisation floor
    # (TPOT-bound, as on azure-code) cannot be bracketed from the floor within screening's trial budget
    hints: tuple[float | None, ...] = (None, None, None)


def _knob_task(job: _KnobJob) -> SensitivityRow:
    """Screen the three pools at the plan's configurations under one changed knob."""
    ctx: _Context = runner.context()
    pl = ctx.planner(0)
    prof = ctx.settings.profile
    roles: list[Role] = [("homogeneous", None), ("short", job.b_short), ("long", job.b_short)]
    gpus = []
    for role, choice, hint in zip(roles, job.configs, job.hints, strict=True):
        p = configured(prof, role[0], role[1], choice)
        if job.strip_allreduce:
            p = dataclasses.replace(p, allreduce_floor_s=0.0, name=p.name + "+no-allreduce-floor")
        sc = _screen(pl, role, p, hint, settings=job.settings)
        n = sc.cost if role[0] == "homogeneous" else max(1, sc.cost)
        gpus.append(n * p.gpus)
    return SensitivityRow(job.knob, job.value, gpus[0], gpus[1] + gpus[2])


# --- the plan ---------------------------------------------------------------------------------------


def _paper_candidate(profile: FleetProfile, role: str, b_short: int | None) -> Candidate:
    p = base_profile(profile, role, b_short)
    return Candidate(p.max_num_seqs, p.max_num_batched_tokens)


def _screen_gpus(sc: Screen, gpus: int, pool: bool) -> float:
    return (max(1, sc.cost) if pool else sc.cost) * gpus


def _sensitivity_lines(
    tuning: dict[str, Search], b: int, profile: FleetProfile, thresholds: Sequence[int]
) -> tuple[list[SensitivityRow], SensitivityRow]:
    """Rows read off the search: each knob of each pool along its line through the choice, B_short."""
    h, sh, lo = tuning["homogeneous"], tuning[f"short@{b}"], tuning[f"long@{b}"]
    g = profile.long.gpus

    def gpus_of(search_: Search, c: Candidate | None = None, pool: bool = True) -> float:
        sc = search_.screens[c or search_.best]
        return _screen_gpus(sc, g, pool)

    base_h = gpus_of(h, pool=False)
    base_d = gpus_of(sh) + gpus_of(lo)
    base = SensitivityRow("plan (screened)", f"B_short={b}", base_h, base_d)
    rows = []
    for name, sr, other in (("homogeneous", h, None), ("short pool", sh, lo), ("long pool", lo, sh)):
        for knob, attr in (("max_num_seqs", "seqs"), ("max_num_batched_tokens", "chunk")):
            for sc in sr.line(attr):
                c = Candidate(sc.seqs, sc.chunk)
                if c == sr.best:
                    continue
                value = str(getattr(c, attr))
                if name == "homogeneous":
                    rows.append(SensitivityRow(f"{name} {knob}", value, gpus_of(h, c, pool=False), base_d, sc.binding))
                else:
                    assert other is not None
                    rows.append(
                        SensitivityRow(f"{name} {knob}", value, base_h, gpus_of(sr, c) + gpus_of(other), sc.binding)
                    )
    for t in thresholds:
        if t != b and f"short@{t}" in tuning and f"long@{t}" in tuning:
            rows.append(
                SensitivityRow("B_short", str(t), base_h, gpus_of(tuning[f"short@{t}"]) + gpus_of(tuning[f"long@{t}"]))
            )
    return rows, base


def _knob_jobs(
    settings: PlanSettings, b: int, configs: tuple[Candidate | None, ...], profile: FleetProfile
) -> list[_KnobJob]:
    s = settings
    jobs = []
    for bal in BALANCERS:
        if bal != s.balancer:
            jobs.append(
                _KnobJob(
                    "balancer (both sides)",
                    bal,
                    b,
                    configs,
                    dataclasses.replace(s, balancer=bal, homogeneous_balancer=None),
                )
            )
    slo = s.slo
    if slo.tpot_p99_s is not None:
        jobs.append(
            _KnobJob(
                "decode SLO",
                f"P99 ITL <= {1000 * slo.tpot_p99_s:g} ms instead of TPOT",
                b,
                configs,
                dataclasses.replace(s, slo=dataclasses.replace(slo, tpot_p99_s=None, itl_p99_s=slo.tpot_p99_s)),
            )
        )
        for f in (0.5, 2.0):
            jobs.append(
                _KnobJob(
                    "P99 TPOT SLO",
                    f"{1000 * slo.tpot_p99_s * f:g} ms",
                    b,
                    configs,
                    dataclasses.replace(s, slo=dataclasses.replace(slo, tpot_p99_s=slo.tpot_p99_s * f)),
                )
            )
    for f in (0.5, 2.0):
        jobs.append(
            _KnobJob(
                "P99 TTFT SLO",
                f"{slo.ttft_p99_s * f:g} s",
                b,
                configs,
                dataclasses.replace(s, slo=dataclasses.replace(slo, ttft_p99_s=slo.ttft_p99_s * f)),
            )
        )
    if profile.long.allreduce_floor_s > 0:
        jobs.append(_KnobJob("step cost: all-reduce floor", "0 (a faster all-reduce kernel)", b, configs, s, True))
    paper = (
        _paper_candidate(profile, "homogeneous", None),
        _paper_candidate(profile, "short", b),
        _paper_candidate(profile, "long", b),
    )
    jobs.append(_KnobJob("provisioning (both sides)", "paper worst-case reservation", b, paper, s))
    return jobs


def plan(
    settings: PlanSettings,
    workloads: Sequence[tuple[int, SimWorkload]],
    thresholds: Sequence[int],
    trace: str,
    progress: runner.Progress | None = None,
) -> PlanReport:
    """Choose each pool's configuration (tuned), size every fleet once per (seed, workload) replication
    and compare them across replications; optionally the paper's pair, equal-GPU runs, sensitivity."""
    check_thresholds(settings.profile, thresholds)
    if not workloads:
        raise ValueError("give at least one workload")
    thresholds = list(thresholds)
    ctx = _Context(settings, list(workloads))
    ctx.planner(0)  # fails early on a trace with nothing that fits
    run = runner.Runner(ctx, settings.jobs, progress)
    try:
        return _plan(ctx, run, thresholds, trace)
    finally:
        run.close()


# What each task of a plan is expected to cost, in full-scale simulations: the progress bar's weights.
W_SEARCH, W_HOMOGENEOUS, W_THRESHOLD, W_KNOB, W_EQUAL = 6.0, 8.0, 10.0, 1.5, 1.2


def _expected_work(
    s: PlanSettings, replications: int, thresholds: list[int], splittable: list[int]
) -> tuple[int, float]:
    """Tasks and weight of the whole plan (the equal-GPU runs counted as if every fleet were feasible),
    announced up front so the ETA covers the stages not started yet."""
    tuned = TUNED in s.baselines
    searches = 1 + 2 * len(splittable) if tuned else 0
    sized = replications * len(s.baselines)
    knobs = (
        len(_knob_jobs(s, splittable[0], (None, None, None), s.profile))
        if s.sensitivity and tuned and splittable
        else 0
    )
    equal = sized * len(thresholds) if s.equal_gpus else 0
    tasks = searches + sized * (1 + len(thresholds)) + knobs + equal
    weight = (
        W_SEARCH * searches + sized * (W_HOMOGENEOUS + W_THRESHOLD * len(thresholds)) + W_KNOB * knobs + W_EQUAL * equal
    )
    return tasks, weight


def _plan(ctx: _Context, run: runner.Runner, thresholds: list[int], trace: str) -> PlanReport:
    s = ctx.settings
    prof = s.profile
    pl0 = ctx.planner(0)
    _refuse_an_unbuildable_rate(pl0)
    splittable = [b for b in thresholds if pl0.offline_routing(b).any()]
    run.expect(*_expected_work(s, len(ctx.workloads), thresholds, splittable))
    # 1. configurations: search each pool's on the first replication
    tuning: dict[str, Search] = {}
    if TUNED in s.baselines:
        roles: list[Role] = [("homogeneous", None)]
        for b in splittable:
            roles += [("short", b), ("long", b)]
        searches = run.map(
            "choosing configurations", _search_task, roles, [W_SEARCH] * len(roles), [_role_name(r) for r in roles]
        )
        tuning = {_role_name(r): sr for r, sr in zip(roles, searches, strict=True)}

    def configs_of(provisioning: str, role: str, b: int | None) -> tuple[Candidate | None, float | None]:
        if provisioning == PAPER:
            return None, None
        sr = tuning[_role_name((role, b))]
        return sr.best, sr.screens[sr.best].instances

    # 2. size every fleet on every replication
    jobs: list[_SizeJob] = []
    for k in range(len(ctx.workloads)):
        for provisioning in s.baselines:
            c, h = configs_of(provisioning, "homogeneous", None)
            jobs.append(_SizeJob(k, provisioning, None, (c,), (h,)))
            for b in thresholds:
                if b in splittable:
                    cs, hs = configs_of(provisioning, "short", b)
                    cl, hl = configs_of(provisioning, "long", b)
                else:
                    (cs, hs), (cl, hl) = (None, None), (None, None)
                jobs.append(_SizeJob(k, provisioning, b, (cs, cl), (hs, hl), c))
    labels = [
        f"seed {ctx.workloads[j.k][0]}: {j.provisioning} " + ("homogeneous" if j.b_short is None else f"B={j.b_short}")
        for j in jobs
    ]
    knob_jobs: list[_KnobJob] = []
    sens_b: int | None = None
    sens_rows: list[SensitivityRow] = []
    if s.sensitivity and tuning and splittable:

        def est(b: int) -> float:
            g = prof.long.gpus
            return _screen_gpus(tuning[f"short@{b}"].screens[tuning[f"short@{b}"].best], g, True) + _screen_gpus(
                tuning[f"long@{b}"].screens[tuning[f"long@{b}"].best], g, True
            )

        sens_b = min(splittable, key=est)
        cfg3 = (tuning["homogeneous"].best, tuning[f"short@{sens_b}"].best, tuning[f"long@{sens_b}"].best)
        screened = [tuning[k].screens[tuning[k].best] for k in ("homogeneous", f"short@{sens_b}", f"long@{sens_b}")]
        hints3 = tuple(sc.instances if sc.feasible else None for sc in screened)
        knob_jobs = [dataclasses.replace(j, hints=hints3) for j in _knob_jobs(s, sens_b, cfg3, prof)]
    items: list[Any] = [*jobs, *knob_jobs]
    weights = [W_HOMOGENEOUS if j.b_short is None else W_THRESHOLD for j in jobs] + [W_KNOB] * len(knob_jobs)
    labels += [f"sensitivity: {j.knob} = {j.value}" for j in knob_jobs]
    results = run.map("sizing fleets", _stage2_task, items, weights, labels)
    sized = results[: len(jobs)]
    knob_rows = results[len(jobs) :]
    reps: list[Replicate] = []
    it = iter(sized)
    for seed, wl in ctx.workloads:
        homog: dict[str, FleetOutcome] = {}
        ths: dict[str, list[ThresholdOutcome]] = {}
        for provisioning in s.baselines:
            h = next(it)
            assert isinstance(h, FleetOutcome)
            homog[provisioning] = h
            ths[provisioning] = []
            for _ in thresholds:
                t = next(it)
                assert isinstance(t, ThresholdOutcome)
                if t.dual.feasible and h.feasible:
                    t.saving = 1.0 - t.dual.gpus / h.gpus
                ths[provisioning].append(t)
        reps.append(Replicate(seed, len(wl), homog, ths))
    # 3. equal GPUs: both sides at the homogeneous fleet's size
    if s.equal_gpus:
        eq_jobs = []
        for k, rep in enumerate(reps):
            for provisioning in s.baselines:
                homog_out = rep.homogeneous[provisioning]
                for t in rep.thresholds[provisioning]:
                    if t.dual.feasible and homog_out.feasible:
                        c = configs_of(provisioning, "homogeneous", None)[0]
                        cs = configs_of(provisioning, "short", t.b_short)[0]
                        cl = configs_of(provisioning, "long", t.b_short)[0]
                        eq_jobs.append(_EqualJob(k, provisioning, t.b_short, (c, cs, cl), homog_out, t.dual))
        eq = run.map(
            "equal-GPU runs",
            _equal_task,
            eq_jobs,
            [W_EQUAL] * len(eq_jobs),
            [
                f"seed {ctx.workloads[j.k][0]}: {j.provisioning} B={j.b_short} at {j.homogeneous.gpus} GPUs"
                for j in eq_jobs
            ],
        )
        for job, e in zip(eq_jobs, eq, strict=True):
            reps[job.k].equal_gpu.append(e)
    comparisons = {}
    for provisioning in s.baselines:
        verdicts = [_verdict(b, [r.thresholds[provisioning][i] for r in reps]) for i, b in enumerate(thresholds)]
        homog_usd = Spread(tuple(r.homogeneous[provisioning].usd_per_year for r in reps))
        pick_against = homog_usd if all(r.homogeneous[provisioning].feasible for r in reps) else Spread((math.inf,))
        best, tied, note = choose(verdicts, pick_against)
        comparisons[provisioning] = Comparison(
            provisioning,
            Spread(tuple(float(r.homogeneous[provisioning].gpus) for r in reps)),
            homog_usd,
            verdicts,
            best,
            tied,
            note,
        )
    if sens_b is not None:
        lines, base = _sensitivity_lines(tuning, sens_b, prof, thresholds)
        sens_rows = [base, *lines, *knob_rows]
    erlang = _erlang_checks(s, tuning, sens_b or thresholds[0]) if s.erlang else []
    info = s.as_dict()
    info["seeds"] = [seed for seed, _ in ctx.workloads]
    return PlanReport(info, trace, thresholds, reps, comparisons, tuning, sens_rows, sens_b, erlang)


def _refuse_an_unbuildable_rate(pl: Planner) -> None:
    """Before any search: even the homogeneous configuration with the most throughput per instance
    (the largest batch the grid allows) needs more instances than the simulator may build."""
    s = pl.s
    prof = s.profile.long
    seqs = seqs_grid(prof, pl.wl, s.max_seqs)[-1]
    best = prof.tuned(seqs, max(max(s.chunks), seqs))
    floor = instances_for(s.rate, pl.mu(best, "homogeneous@None", pl.wl), s.slo.util_cap)
    if floor > s.max_instances:
        raise ValueError(
            f"at {s.rate:g} req/s the homogeneous fleet needs at least {floor:,} instances (its utilisation "
            f"floor at {seqs} sequences per instance), above --max-instances {s.max_instances:,}: lower --rate, "
            "or raise the cap if this machine has the memory"
        )


def _stage2_task(job: Any) -> Any:
    return _knob_task(job) if isinstance(job, _KnobJob) else _size_task(job)


def _erlang_checks(settings: PlanSettings, tuning: dict[str, Search], b: int) -> list[ErlangComparison]:
    """The simulator against Erlang C on the batch slots of the plan's pools."""
    prof = settings.profile
    pools: dict[str, InstanceProfile] = {"homogeneous": prof.long, "short": base_profile(prof, "short", b)}
    for name, key in (("homogeneous (tuned)", "homogeneous"), ("short (tuned)", f"short@{b}")):
        if key in tuning:
            role = "homogeneous" if key == "homogeneous" else "short"
            pools[name] = configured(prof, role, None if role == "homogeneous" else b, tuning[key].best)
    seen: set[tuple[int, float]] = set()
    out = []
    for name, p in pools.items():
        shape = (p.max_num_seqs, p.step_s(p.max_num_seqs))
        if shape in seen:
            continue
        seen.add(shape)
        out.append(erlang_comparison(name, p, stream(settings.seed, "erlang", name), requests=100_000))
    return out
