"""The production router as the simulator's dispatcher: the simulated router is the real router.

Each request is reduced to the ``RequestShape`` the ext_proc server would build (one chat message of
``text_bytes`` in the request's category, ``max_tokens`` = its output length), routed by
``BudgetRouter.route`` with both pools' in-flight pressure for spillover, and its true
``prompt_tokens`` are fed back through ``BudgetRouter.learn`` when it completes, at its completion
time, so calibration converges in simulated time exactly as it would behind Envoy.

Spillover pressure is by default the router's own in-flight count, which in the simulator is exact
(one router sees every request). With ``scrape_delay_s`` it is the live-load policy instead
(``LivePressure``, as ``live_load`` configures it in production): the pools' engine loads sampled
every ``scrape_interval_s`` and seen ``scrape_delay_s`` later, plus what was sent since the sample,
so the plan shows what realistic staleness does to spillover and the SLOs. Samples are taken at the
first arrival at or after each scrape time (the simulator only runs the router at arrivals).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from extproc.algorithm import BudgetRouter, RequestShape
from extproc.algorithm.budget import Estimate
from extproc.algorithm.dispatch import SHORT, SPILLOVER
from extproc.algorithm.pressure import EngineLoad, InFlightPressure, LivePressure, Sample
from extproc.algorithm.request_shape import CHAT
from extproc.planner.sim_workload import SimWorkload

POOLS = (SHORT, "long")  # fleet pool index 0 is short, 1 is long


class RouterDispatch:
    def __init__(
        self,
        router: BudgetRouter,
        wl: SimWorkload,
        short_slots: int,
        long_slots: int,
        scrape_delay_s: float | None = None,
        scrape_interval_s: float = 0.1,
    ) -> None:
        self.router = router
        capacity = {POOLS[0]: short_slots, POOLS[1]: long_slots}
        self._now = 0.0
        self.live: LivePressure | None = None
        if scrape_delay_s is not None:  # never stale in simulation: every sample arrives, delayed
            max_age = scrape_delay_s + 2 * scrape_interval_s
            self.live = LivePressure(capacity, max_age, clock=lambda: self._now)
        self.pressure: InFlightPressure = self.live or InFlightPressure(capacity)
        self.scrape_delay_s, self.scrape_interval_s = scrape_delay_s or 0.0, scrape_interval_s
        self._loads: Callable[[], list[EngineLoad]] | None = None
        self._next_scrape = 0.0
        self._in_transit: deque[tuple[float, list[Sample]]] = deque()  # (visible at, one sample per pool)
        self._arrival = wl.arrival.tolist()
        self._category = wl.category
        self._bytes = wl.text_bytes.tolist()
        self._output = wl.output.tolist()
        self._prompt = wl.prompt.tolist()
        n = len(wl)
        self._pending: dict[int, tuple[RequestShape, Estimate]] = {}
        self.estimated_total = np.zeros(n, dtype=np.int64)
        self.spilled = np.zeros(n, dtype=bool)

    def watch(self, loads: Callable[[], list[EngineLoad]]) -> None:
        self._loads = loads

    def _scrape(self, now: float) -> None:
        """Take the samples due by ``now`` and deliver those whose delay has passed."""
        live, loads = self.live, self._loads
        if live is None or loads is None:
            return
        self._now = now
        if now >= self._next_scrape:
            samples = [Sample(load, now, 1, 1, live.sent.get(p, 0)) for p, load in zip(POOLS, loads(), strict=True)]
            self._in_transit.append((now + self.scrape_delay_s, samples))
            self._next_scrape = now + self.scrape_interval_s
        while self._in_transit and self._in_transit[0][0] <= now:
            for pool, sample in zip(POOLS, self._in_transit.popleft()[1], strict=True):
                live.observe(pool, sample)

    def choose(self, i: int) -> int:
        self._scrape(self._arrival[i])
        shape = RequestShape(
            endpoint=CHAT,
            category=self._category[i],
            text_bytes=self._bytes[i],
            messages=1,
            output_tokens=self._output[i],
        )
        pressure = self.pressure
        est, decision = self.router.route(shape, pressure.pressure(SHORT), pressure.pressure(POOLS[1]))
        self._pending[i] = (shape, est)
        self.estimated_total[i] = est.total
        if decision.reason == SPILLOVER:
            self.spilled[i] = True
        pressure.acquire(decision.pool)
        return 0 if decision.pool == SHORT else 1

    def finished(self, i: int, pool: int, completed: bool) -> None:
        self.pressure.release(POOLS[pool])
        shape, est = self._pending.pop(i)
        if completed:  # a rejected request (vLLM's 400) carries no usage to learn from
            self.router.learn(shape, self._prompt[i], est)
