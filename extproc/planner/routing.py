"""The production router as the simulator's dispatcher: the simulated router is the real router.

Each request is reduced to the ``RequestShape`` the ext_proc server would build (one chat message of
``text_bytes`` in the request's category, ``max_tokens`` = its output length), routed by
``BudgetRouter.route`` with both pools' in-flight pressure for spillover, and its true
``prompt_tokens`` are fed back through ``BudgetRouter.learn`` when it completes, at its completion
time, so calibration converges in simulated time exactly as it would behind Envoy.
"""

from __future__ import annotations

import numpy as np

from extproc.algorithm import BudgetRouter, RequestShape
from extproc.algorithm.budget import Estimate
from extproc.algorithm.dispatch import SHORT, SPILLOVER
from extproc.algorithm.pressure import InFlightPressure
from extproc.algorithm.request_shape import CHAT
from extproc.planner.sim_workload import SimWorkload

POOLS = (SHORT, "long")  # fleet pool index 0 is short, 1 is long


class RouterDispatch:
    def __init__(self, router: BudgetRouter, wl: SimWorkload, short_slots: int, long_slots: int) -> None:
        self.router = router
        self.pressure = InFlightPressure({POOLS[0]: short_slots, POOLS[1]: long_slots})
        self._category = wl.category
        self._bytes = wl.text_bytes.tolist()
        self._output = wl.output.tolist()
        self._prompt = wl.prompt.tolist()
        n = len(wl)
        self._pending: dict[int, tuple[RequestShape, Estimate]] = {}
        self.estimated_total = np.zeros(n, dtype=np.int64)
        self.spilled = np.zeros(n, dtype=bool)

    def choose(self, i: int) -> int:
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
