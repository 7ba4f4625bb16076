"""The production router as the simulator's dispatcher: the simulated router is the real router.

Each request is reduced to the ``RequestShape`` the ext_proc server would build (one chat message of
``text_bytes`` in the request's category, ``max_tokens`` = its output length) and goes through the
same two calls the server makes: ``BudgetRouter.route`` at its arrival and ``BudgetRouter.finish``
with its true ``prompt_tokens`` at its completion. The router's clock is simulated time, so pool
pressure, the leases of unobserved requests, sampling once a category converged and calibration all
evolve in simulated time exactly as they would behind Envoy.

Spillover pressure is by default the router's own in-flight count, which in the simulator is exact
(one router sees every request). When the router's pressure is the live-load policy
(``LivePressure``, as ``live_load`` configures it in production), this dispatcher plays the scraper:
the pools' engine loads sampled every ``scrape_interval_s`` and seen ``scrape_delay_s`` later, plus
what was sent since the sample, so the plan shows what realistic staleness does to spillover and the
SLOs. Samples are taken at the first arrival at or after each scrape time (the simulator only runs
the router at arrivals).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np

from extproc.algorithm import BudgetRouter, LivePressure, Outcome, RequestShape, Ticket
from extproc.algorithm.dispatch import LONG, SHORT, SPILLOVER
from extproc.algorithm.pressure import EngineLoad, Sample
from extproc.algorithm.request_shape import CHAT
from extproc.algorithm.router import NO_OUTCOME
from extproc.planner.sim_workload import SimWorkload

POOLS = (SHORT, LONG)  # fleet pool index 0 is short, 1 is long
SCRAPE_INTERVAL_S = 0.1


class SimClock:
    """Simulated seconds; the dispatcher moves it to each event's time before calling the router."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class RouterDispatch:
    def __init__(
        self,
        router: BudgetRouter,
        wl: SimWorkload,
        clock: SimClock,
        scrape_delay_s: float | None = None,
        scrape_interval_s: float = SCRAPE_INTERVAL_S,
    ) -> None:
        """``router`` must run on ``clock``, its pool pressure too (see ``Planner.router``)."""
        self.router = router
        self.clock = clock
        pressure = router.pressure
        self.live = pressure if isinstance(pressure, LivePressure) and scrape_delay_s is not None else None
        self.scrape_delay_s, self.scrape_interval_s = scrape_delay_s or 0.0, scrape_interval_s
        self._loads: Callable[[], list[EngineLoad]] | None = None
        self._next_scrape = 0.0
        self._in_transit: deque[tuple[float, list[Sample]]] = deque()  # (visible at, one sample per pool)
        self._category = wl.category
        self._bytes = wl.text_bytes.tolist()
        self._output = wl.output.tolist()
        self._prompt = wl.prompt.tolist()
        n = len(wl)
        self._pending: dict[int, Ticket] = {}
        self.estimated_total = np.zeros(n, dtype=np.int64)
        self.spilled = np.zeros(n, dtype=bool)

    def watch(self, loads: Callable[[], list[EngineLoad]]) -> None:
        self._loads = loads

    def _scrape(self, now: float) -> None:
        """Take the samples due by ``now`` and deliver those whose delay has passed."""
        live, loads = self.live, self._loads
        if live is None or loads is None:
            return
        if now >= self._next_scrape:
            samples = [Sample(load, now, 1, 1, live.sent.get(p, 0)) for p, load in zip(POOLS, loads(), strict=True)]
            self._in_transit.append((now + self.scrape_delay_s, samples))
            self._next_scrape = now + self.scrape_interval_s
        while self._in_transit and self._in_transit[0][0] <= now:
            for pool, sample in zip(POOLS, self._in_transit.popleft()[1], strict=True):
                live.observe(pool, sample)

    def shape(self, i: int) -> RequestShape:
        return RequestShape(
            endpoint=CHAT,
            category=self._category[i],
            text_bytes=self._bytes[i],
            messages=1,
            output_tokens=self._output[i],
        )

    def choose(self, i: int, now: float) -> int:
        self.clock.now = now
        self._scrape(now)
        ticket = self.router.route(self.shape(i))
        self._pending[i] = ticket
        assert ticket.estimate is not None  # a shaped request always has one
        self.estimated_total[i] = ticket.estimate.total
        if ticket.decision.reason == SPILLOVER:
            self.spilled[i] = True
        return POOLS.index(ticket.decision.pool)

    def finished(self, i: int, pool: int, completed: bool, now: float) -> None:
        """A rejected request (vLLM's 400) carries no usage to observe."""
        self.clock.now = now
        ticket = self._pending.pop(i)
        self.router.finish(ticket, Outcome(self._prompt[i]) if completed else NO_OUTCOME)
