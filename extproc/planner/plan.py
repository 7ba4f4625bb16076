"""Does a dual-pool split pay off for this traffic? Size both fleets by simulation and compare.

For the homogeneous baseline (every instance in the long configuration, round-robin as in the paper)
and for each candidate ``B_short`` (a short pool provisioned at that context, the long pool as is,
the production router in front), find the fewest instances meeting the SLOs, and report them next to
the closed form α(1 − 1/ρ) with ρ measured by the same simulator.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from extproc.algorithm import BudgetRouter, LivePressure
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.config import Config
from extproc.planner.capacity import (
    alpha_at,
    closed_form_saving,
    instances_for,
    prefill_floor_p99,
    saturated_throughput,
    short_pool_at,
)
from extproc.planner.fleet import LEAST_OUTSTANDING, ROUND_ROBIN, FleetSim, PoolConfig, SimResult
from extproc.planner.profiles import FleetProfile, InstanceProfile
from extproc.planner.routing import SCRAPE_INTERVAL_S, RouterDispatch, SimClock
from extproc.planner.service_levels import PoolMetrics, Slo, fleet_percentiles, summarise
from extproc.planner.sim_workload import SimWorkload
from extproc.planner.sizing import size_pools
from extproc.router_factory import build_router

HOURS_PER_YEAR = 8760.0
Progress = Callable[[str, float], None]


@dataclass(frozen=True)
class PlanSettings:
    profile: FleetProfile
    rate: float
    slo: Slo = field(default_factory=Slo)
    warmup: float = 0.1
    homogeneous_balancer: str = ROUND_ROBIN
    pool_balancer: str = LEAST_OUTSTANDING
    homogeneous_seqs: int | None = None  # override max_num_seqs of the baseline (vLLM-style overcommit)
    spillover: bool | None = None  # None: the config's spillover.enabled
    seed: int = 0
    max_reject: float = 0.001  # share of requests a pick may lose to over-context rejections
    scrape_delay_s: float | None = None  # live-load spillover with this staleness; None: exact in-flight count
    # The router's settings, as ``serve`` reads them; the plan overrides only B_short, the pool
    # contexts and capacities (from the fleet it sizes) and, when set, spillover.
    config: Config = field(default_factory=Config)

    @property
    def spills(self) -> bool:
        return self.config.spillover.enabled if self.spillover is None else self.spillover

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


@dataclass
class FleetOutcome:
    """A sized fleet and how it behaved at that size."""

    instances: tuple[int, ...]
    gpus: int
    usd_per_year: float
    feasible: bool
    reason: str
    pools: list[PoolMetrics]
    fleet: dict[str, float]
    simulations: int
    offered_utilisation: list[float]  # per pool: its arrival rate / (instances x saturated throughput)

    def as_dict(self) -> dict[str, Any]:
        return {
            "instances": list(self.instances),
            "gpus": self.gpus,
            "usd_per_year": self.usd_per_year,
            "feasible": self.feasible,
            "reason": self.reason,
            "simulations": self.simulations,
            "offered_utilisation": self.offered_utilisation,
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
    rejected_share: float  # over context or full queue: under-estimated requests the short pool refuses

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "dual"}
        out["dual"] = self.dual.as_dict()
        return out


@dataclass
class PlanReport:
    settings: dict[str, Any]
    trace: str
    requests: int
    mu_homogeneous: float
    homogeneous: FleetOutcome
    thresholds: list[ThresholdOutcome]
    best: int | None  # index into thresholds of the cheapest feasible dual fleet

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": self.settings,
            "trace": self.trace,
            "requests": self.requests,
            "mu_homogeneous": self.mu_homogeneous,
            "homogeneous": self.homogeneous.as_dict(),
            "thresholds": [t.as_dict() for t in self.thresholds],
            "best_b_short": None if self.best is None else self.thresholds[self.best].b_short,
        }


def usd_per_year(pools: Sequence[tuple[InstanceProfile, int]]) -> float:
    return sum(prof.usd_per_hour * n for prof, n in pools) * HOURS_PER_YEAR


class Planner:
    def __init__(self, settings: PlanSettings, wl: SimWorkload, progress: Progress | None = None) -> None:
        if not settings.rate > 0:
            raise ValueError("rate must be > 0 req/s")
        self.s = settings
        self.wl = wl
        self.progress = progress
        self.rng = np.random.default_rng(settings.seed)
        self._mu: dict[tuple[str, str], float] = {}

    # --- building blocks -------------------------------------------------------------------
    def _tick(self, label: str) -> Callable[[int], None] | None:
        if self.progress is None:
            return None
        n = max(1, len(self.wl))
        report = self.progress
        return lambda i: report(label, i / n)

    def mu(self, profile: InstanceProfile, traffic: str, wl: SimWorkload) -> float:
        key = (profile.name, traffic)
        if key not in self._mu:
            self._mu[key] = saturated_throughput(profile, wl, self.rng)
        return self._mu[key]

    def simulate_homogeneous(self, n: int, wl: SimWorkload | None = None, label: str = "") -> SimResult:
        cfg = PoolConfig("homogeneous", self.s.homogeneous, n, self.s.homogeneous_balancer)
        return FleetSim([cfg]).run(wl or self.wl, self._tick(label or f"homogeneous x{n}"))

    def router(self, b_short: int, short_slots: int, long_slots: int, clock: SimClock,
               spillover: bool | None = None, live: bool = False) -> BudgetRouter:
        """The production router (``build_router`` over the plan's config) for a fleet at ``b_short``
        with these slots, on simulated time, sampling from the plan's seed. ``live``: its pressure is
        the live-load policy with ``scrape_delay_s`` staleness (``RouterDispatch`` delivers samples)."""
        cfg = copy.deepcopy(self.s.config)
        cfg.routing.b_short = cfg.routing.short_context = b_short
        cfg.routing.long_context = self.s.profile.long.max_model_len
        cfg.spillover.enabled = self.s.spills if spillover is None else spillover
        cfg.spillover.short_capacity, cfg.spillover.long_capacity = short_slots, long_slots
        pressure = None
        if live and self.s.scrape_delay_s is not None:  # never stale in simulation: every sample arrives
            max_age = self.s.scrape_delay_s + 2 * SCRAPE_INTERVAL_S
            pressure = LivePressure({SHORT: short_slots, LONG: long_slots}, max_age, clock)
        return build_router(cfg, clock, random.Random(self.s.seed), pressure)

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

    def _outcome(
        self,
        res: SimResult,
        sizes: tuple[int, ...],
        profiles: Sequence[InstanceProfile],
        mus: Sequence[float],
        feasible: bool,
        reason: str,
        sims: int,
    ) -> FleetOutcome:
        pools = summarise(res, self.s.warmup)
        share = [float(np.mean(res.pool == p)) for p in range(len(sizes))]
        offered = [
            self.s.rate * f / (n * mu) if mu > 0 else float("nan") for f, n, mu in zip(share, sizes, mus, strict=True)
        ]
        return FleetOutcome(
            instances=sizes,
            gpus=sum(p.gpus * n for p, n in zip(profiles, sizes, strict=True)),
            usd_per_year=usd_per_year(list(zip(profiles, sizes, strict=True))),
            feasible=feasible,
            reason=reason,
            pools=pools,
            fleet=fleet_percentiles(res, self.s.warmup),
            simulations=sims,
            offered_utilisation=offered,
        )

    # --- sizing ----------------------------------------------------------------------------
    def size_homogeneous(self) -> tuple[FleetOutcome, float]:
        prof = self.s.homogeneous
        mu = self.mu(prof, "all", self.wl)
        floor = prefill_floor_p99(prof, self.wl)
        start = instances_for(self.s.rate, mu, self.s.slo.util_cap)
        if floor > self.s.slo.ttft_p99_s:
            res = self.simulate_homogeneous(start)
            reason = f"P99 TTFT floor {floor:.2f} s (prefill alone) exceeds the SLO at any fleet size"
            return self._outcome(res, (start,), [prof], [mu], False, reason, 1), mu
        runs: dict[tuple[int, ...], SimResult] = {}

        def check(sizes: tuple[int, ...]) -> list[bool]:
            runs[sizes] = res = self.simulate_homogeneous(sizes[0])
            return [summarise(res, self.s.warmup)[0].meets(self.s.slo)]

        sized = size_pools(check, (start,))
        sizes, sims = sized.sizes, len(sized.trials)
        if sized.feasible:
            sizes, sims = self._verified(
                sizes, check, lambda s, wl: [self.simulate_homogeneous(s[0], wl, "verify")], sims
            )
        res = runs.get(sizes) or self.simulate_homogeneous(sizes[0])
        return self._outcome(res, sizes, [prof], [mu], sized.feasible, sized.reason, sims), mu

    def _verified(
        self,
        sizes: tuple[int, ...],
        check: Callable[[tuple[int, ...]], list[bool]],
        simulate: Callable[[tuple[int, ...], SimWorkload], list[SimResult]],
        sims: int,
    ) -> tuple[tuple[int, ...], int]:
        """Re-simulate the sized fleet on a resampled workload; grow any pool that misses its SLO
        there (by 2 %, at least one instance) until both samples pass. P99s of a finite run are
        noisy, and the smallest size that passed once sits right at the edge."""
        other = self.wl.resampled(np.random.default_rng([self.s.seed, 7]))
        for _ in range(8):
            res = simulate(sizes, other)[0]
            sims += 1
            fails = [not m.meets(self.s.slo) for m in summarise(res, self.s.warmup)]
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
        mu_s = self.mu(short, f"short@{b_short}", wl.subset(routed_short))
        long_wl = wl.subset(~routed_short) if (~routed_short).any() else wl
        mu_l = self.mu(long, f"long@{b_short}", long_wl)
        alpha_r = float(routed_short.mean())
        start = (
            instances_for(s.rate * alpha_r, mu_s, s.slo.util_cap),
            instances_for(s.rate * (1 - alpha_r), mu_l, s.slo.util_cap),
        )
        start = (max(1, start[0]), max(1, start[1]))
        alpha = alpha_at(wl.total, b_short)
        rho = mu_s / mu_h
        closed = closed_form_saving(alpha, rho)
        floors = [
            prefill_floor_p99(short, wl.subset(routed_short)) if routed_short.any() else 0.0,
            prefill_floor_p99(long, long_wl),
        ]
        runs: dict[tuple[int, ...], tuple[SimResult, RouterDispatch]] = {}

        def check(sizes: tuple[int, ...]) -> list[bool]:
            runs[sizes] = out = self.simulate_dual(b_short, sizes[0], sizes[1])
            return [m.meets(s.slo) for m in summarise(out[0], s.warmup)]

        if max(floors) > s.slo.ttft_p99_s:
            pool = "short" if floors[0] > s.slo.ttft_p99_s else "long"
            sizes, feasible, sims = start, False, 1
            reason = f"{pool} pool's P99 TTFT floor {max(floors):.2f} s (prefill alone) exceeds the SLO"
        else:
            sized = size_pools(check, start)
            sizes, feasible, reason, sims = sized.sizes, sized.feasible, sized.reason, len(sized.trials)
            if feasible:
                sizes, sims = self._verified(
                    sizes, check, lambda z, other: [self.simulate_dual(b_short, z[0], z[1], other, "verify")[0]], sims
                )
                if sizes not in runs:
                    check(sizes)
        res, dispatch = runs.get(sizes) or self.simulate_dual(b_short, *sizes)
        dual = self._outcome(res, sizes, [short, long], [mu_s, mu_l], feasible, reason, sims)
        true_long = wl.total > b_short
        saving = (1.0 - dual.gpus / homogeneous.gpus) if (dual.feasible and homogeneous.feasible) else None
        return ThresholdOutcome(
            b_short=b_short,
            alpha=alpha,
            alpha_routed=float(np.mean(res.pool == 0)),
            mu_short=mu_s,
            mu_long=mu_l,
            rho=rho,
            closed_form_saving=closed,
            closed_form_gpus=homogeneous.gpus * (1.0 - closed) if math.isfinite(closed) else float("nan"),
            dual=dual,
            saving=saving,
            misrouted_long_to_short=int(np.sum(true_long & (res.pool == 0))),
            spilled=int(dispatch.spilled.sum()),
            rejected_share=float(np.mean(res.rejected != 0)),
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

    def run(self, thresholds: Sequence[int], trace: str) -> PlanReport:
        if not thresholds:
            raise ValueError("give at least one B_short")
        for b in thresholds:
            if not 0 < b <= self.s.profile.long.max_model_len:
                raise ValueError(
                    f"B_short {b} must be in 1..{self.s.profile.long.max_model_len} (the long pool's context)"
                )
            short_pool_at(self.s.profile.short, b)  # a threshold the short pool cannot be built for fails now
        homogeneous, mu_h = self.size_homogeneous()
        outcomes = [self.size_dual(b, homogeneous, mu_h) for b in thresholds]
        feasible = [i for i, o in enumerate(outcomes) if o.dual.feasible and o.rejected_share <= self.s.max_reject]
        best = min(feasible, key=lambda i: (outcomes[i].dual.usd_per_year, outcomes[i].b_short)) if feasible else None
        settings = {
            "profile": self.s.profile.name,
            "rate": self.s.rate,
            "slo": dataclasses.asdict(self.s.slo),
            "warmup": self.s.warmup,
            "homogeneous_balancer": self.s.homogeneous_balancer,
            "pool_balancer": self.s.pool_balancer,
            "homogeneous_max_num_seqs": self.s.homogeneous.max_num_seqs,
            "spillover": self.s.spills,
            "seed": self.s.seed,
            "max_reject": self.s.max_reject,
            "scrape_delay_s": self.s.scrape_delay_s,
        }
        return PlanReport(settings, trace, len(self.wl), mu_h, homogeneous, outcomes, best)
