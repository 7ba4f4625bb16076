"""A fleet of pools of instances behind a dispatcher, driven by one time-ordered event loop.

Arrivals come from the workload in time order; before each arrival every instance event due by then
is applied, so the dispatcher and the load balancer see the fleet exactly as it is at that moment
(in-flight counts, the router's calibration learned from completions so far).

Inside a pool the balancer is Envoy's: ``least_request`` (Envoy's LEAST_REQUEST with equal weights:
two hosts drawn at random, with replacement, and the one with fewer active requests taken, the first on
a tie — power of two choices), ``jsq`` (the exact join-shortest-queue over every instance, which no
Envoy does; a bound on what balancing can give) or ``round_robin``.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from extproc.algorithm.pressure import EngineLoad
from extproc.planner.instance import Instance, SimRequest
from extproc.planner.latency_hist import LatencyHistogram
from extproc.planner.profiles import InstanceProfile
from extproc.planner.sim_workload import SimWorkload

LEAST_REQUEST, JSQ, ROUND_ROBIN = "least_request", "jsq", "round_robin"
BALANCERS = (LEAST_REQUEST, JSQ, ROUND_ROBIN)
# Why a request got no answer.
ACCEPTED, OVER_CONTEXT, QUEUE_FULL = 0, 1, 2


@dataclass(frozen=True, slots=True)
class PoolConfig:
    name: str
    profile: InstanceProfile
    instances: int
    balancer: str = LEAST_REQUEST


class Dispatcher(Protocol):
    """Chooses a pool per request and hears back when it completes (or is rejected), each call at
    simulated time ``now``.

    A dispatcher that also has ``watch(loads)`` is handed, before the run, a callable returning each
    pool's load as its engines would report it on ``/metrics`` (what a live-load router scrapes).
    """

    def choose(self, i: int, now: float) -> int: ...

    def finished(self, i: int, pool: int, completed: bool, now: float) -> None: ...


class SinglePool:
    """The homogeneous baseline: one pool takes everything."""

    def choose(self, i: int, now: float) -> int:
        return 0

    def finished(self, i: int, pool: int, completed: bool, now: float) -> None:
        return None


@dataclass
class PoolStats:
    name: str
    profile: InstanceProfile
    instances: int
    busy_s: float
    seq_s: float
    preemptions: int
    free_blocks_at_end: int  # equals the profile's kv_blocks unless a block leaked
    itl: LatencyHistogram  # per-token gaps in the measurement window


@dataclass
class SimResult:
    workload: SimWorkload
    pools: list[PoolStats]
    pool: np.ndarray  # int8 pool index per request
    first_token: np.ndarray
    finish: np.ndarray
    rejected: np.ndarray  # ACCEPTED / OVER_CONTEXT / QUEUE_FULL
    preemptions: np.ndarray
    duration_s: float
    warmup: float  # share of the first arrivals the measurement window leaves out


class _Pool:
    def __init__(
        self,
        cfg: PoolConfig,
        hook: Callable[[int], Callable[[SimRequest, float], None]],
        window: tuple[float, float],
        seed: int,
    ) -> None:
        if cfg.instances < 1:
            raise ValueError(f"pool {cfg.name!r} needs at least one instance")
        if cfg.balancer not in BALANCERS:
            raise ValueError(f"unknown balancer {cfg.balancer!r}; choose from {', '.join(BALANCERS)}")
        self.cfg = cfg
        self.itl = LatencyHistogram()
        self.instances = [Instance(cfg.profile, hook(i), self.itl, window) for i in range(cfg.instances)]
        self.load = [0] * cfg.instances
        self.balancer = cfg.balancer
        self.next_rr = 0
        self.rng = random.Random(seed ^ zlib.crc32(cfg.name.encode()))

    def engine_load(self) -> EngineLoad:
        """What the pool's vLLM instances would say on /metrics right now, summed over instances."""
        insts = self.instances
        return EngineLoad(
            float(sum(len(x.running) for x in insts)),
            float(sum(len(x.waiting) for x in insts)),
            max(1.0 - x.free / x.p.kv_blocks for x in insts),
        )

    def pick(self) -> int:
        load = self.load
        if self.balancer == LEAST_REQUEST:
            n = len(load)
            if n == 1:
                return 0
            rand = self.rng.randrange
            a, b = rand(n), rand(n)
            return b if load[b] < load[a] else a
        if self.balancer == JSQ:
            return load.index(min(load))
        i = self.next_rr
        self.next_rr = (i + 1) % len(self.instances)
        return i


class FleetSim:
    def __init__(self, pools: list[PoolConfig], dispatcher: Dispatcher | None = None) -> None:
        if not pools:
            raise ValueError("a fleet needs at least one pool")
        self.configs = pools
        self.dispatcher = dispatcher or SinglePool()

    def run(
        self,
        wl: SimWorkload,
        progress: Callable[[int], None] | None = None,
        *,
        warmup: float = 0.1,
        seed: int = 0,
    ) -> SimResult:
        """Simulate ``wl``; per-token latencies count from the arrival of the first request after the
        ``warmup`` share up to the last arrival (the steady state, neither ramp nor drain). ``seed``
        draws the least-request balancer's choices."""
        n = len(wl)
        pool_of = np.full(n, -1, dtype=np.int8)
        first = np.full(n, np.nan)
        finish = np.full(n, np.nan)
        rejected = np.zeros(n, dtype=np.int8)
        preempts = np.zeros(n, dtype=np.int32)
        dispatcher = self.dispatcher
        pools: list[_Pool] = []

        def hook(inst_idx: int) -> Callable[[SimRequest, float], None]:
            pool_idx = len(pools)

            def on_finish(req: SimRequest, now: float) -> None:
                i = req.idx
                first[i] = req.first_token
                finish[i] = now
                preempts[i] = req.preemptions
                pools[pool_idx].load[inst_idx] -= 1
                dispatcher.finished(i, pool_idx, True, now)

            return on_finish

        arrivals = wl.arrival.tolist()
        window = (arrivals[min(int(warmup * n), n - 1)], arrivals[-1]) if n else (0.0, 0.0)
        for cfg in self.configs:
            pools.append(_Pool(cfg, hook, window, seed))
        watch = getattr(dispatcher, "watch", None)
        if watch is not None:
            watch(lambda: [p.engine_load() for p in pools])
        heap: list[tuple[float, int, Instance, int]] = []
        push, pop = heapq.heappush, heapq.heappop
        seq = 0
        prompts = wl.prompt.tolist()
        outputs = wl.output.tolist()
        every = max(1, n // 200)
        for i in range(n):
            now = arrivals[i]
            while heap and heap[0][0] <= now:
                _, _, inst, version = pop(heap)
                if version == inst.version:
                    nxt = inst.complete()
                    if nxt is not None:
                        seq += 1
                        push(heap, (nxt, seq, inst, inst.version))
            p = dispatcher.choose(i, now)
            pool_of[i] = p
            pool = pools[p]
            k = pool.pick()
            inst = pool.instances[k]
            req = SimRequest(i, now, prompts[i], outputs[i])
            if not inst.fits(req):
                rejected[i] = OVER_CONTEXT
            elif inst.queue_full():
                rejected[i] = QUEUE_FULL
            else:
                pool.load[k] += 1
                nxt = inst.arrive(req, now)
                if nxt is not None:
                    seq += 1
                    push(heap, (nxt, seq, inst, inst.version))
                if progress is not None and i % every == 0:
                    progress(i)
                continue
            dispatcher.finished(i, p, False, now)
        end = arrivals[-1] if arrivals else 0.0
        while heap:
            t, _, inst, version = pop(heap)
            if version == inst.version:
                end = t
                nxt = inst.complete()
                if nxt is not None:
                    seq += 1
                    push(heap, (nxt, seq, inst, inst.version))
        if progress is not None:
            progress(n)
        stats = [
            PoolStats(
                cfg.name,
                cfg.profile,
                cfg.instances,
                sum(x.busy_s for x in pool.instances),
                sum(x.seq_s for x in pool.instances),
                sum(x.preemptions for x in pool.instances),
                min(x.free for x in pool.instances),
                pool.itl,
            )
            for cfg, pool in zip(self.configs, pools, strict=True)
        ]
        return SimResult(wl, stats, pool_of, first, finish, rejected, preempts, end, warmup)
