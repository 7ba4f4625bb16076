"""Progress of a plan on stderr: a redrawn line on a terminal, one line per finished task in a log.

A plan is a known list of tasks (screening a candidate configuration, sizing a fleet, an equal-GPU run,
a sensitivity point), each weighted by the full-scale simulations it is expected to cost; each takes as
many simulations as its search needs, so the ETA is projected from the weight done so far and the time
it took. Tasks may finish in any order (two worker processes), so only counts and weights are shown.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressBar:
    def __init__(
        self,
        stream: TextIO | None = None,
        width: int = 24,
        min_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval_s = min_interval_s
        self.tty = self.stream.isatty()
        self._clock = clock
        self._start = clock()
        self._last = -1e9
        self.sims = 0
        self.tasks_done = 0
        self.tasks = 0
        self.weight_done = 0.0
        self.weight_total = 0.0
        self._announced_tasks = 0
        self._announced_weight = 0.0
        self._expected_tasks = 0
        self._expected_weight = 0.0
        self.stage = ""

    def expect(self, tasks: int, weight: float) -> None:
        """The whole plan's tasks and weight, announced before its first stage: without it the ETA would
        cover only the stages started so far and jump at each new one."""
        self._expected_tasks, self._expected_weight = tasks, weight
        self._totals()

    def plan(self, stage: str, tasks: int, weight: float) -> None:
        """Announce a stage's tasks (counted into the totals the ETA projects over, which an expected
        whole-plan total, if larger, still bounds from below)."""
        self.stage = stage
        self._announced_tasks += tasks
        self._announced_weight += weight
        self._totals()
        self._draw(force=True)

    def _totals(self) -> None:
        self.tasks = max(self._expected_tasks, self._announced_tasks)
        self.weight_total = max(self._expected_weight, self._announced_weight)

    def sim(self, label: str) -> None:
        self.sims += 1
        self._draw(label=label)

    def task_done(self, label: str, weight: float) -> None:
        self.tasks_done += 1
        self.weight_done += weight
        if not self.tty:
            print(f"[plan] {self.status()}: {label}", file=self.stream, flush=True)
        self._draw(force=True)

    def eta(self) -> float | None:
        if self.weight_done <= 0:
            return None
        elapsed = self._clock() - self._start
        return elapsed * max(0.0, self.weight_total - self.weight_done) / self.weight_done

    def status(self) -> str:
        left = self.eta()
        return (
            f"{self.stage}: task {self.tasks_done}/{self.tasks}, {self.sims} simulations, "
            f"{duration(self._clock() - self._start)} elapsed, ETA {duration(left) if left is not None else '--'}"
        )

    def _draw(self, label: str = "", force: bool = False) -> None:
        if not self.tty:
            return
        now = self._clock()
        if not force and now - self._last < self.min_interval_s:
            return
        self._last = now
        frac = self.weight_done / self.weight_total if self.weight_total else 0.0
        filled = int(self.width * min(max(frac, 0.0), 1.0))
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {100 * frac:5.1f}%  {self.status()}  {label[:30]:<30}")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        print(
            f"[plan] {self.sims} simulations, {self.tasks_done} tasks in {duration(self._clock() - self._start)}",
            file=self.stream,
            flush=True,
        )
