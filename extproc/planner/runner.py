"""Run a plan's independent tasks inline or on worker processes, and carry their progress back.

Screening candidates, sizing each replication's fleets and the sensitivity points do not depend on
one another, so with ``jobs`` > 1 they run on that many forked worker processes. Every task draws from
random streams of its own (seeded by what it is, never by when or where it runs), so the plan is the
same for any ``jobs``. Workers inherit the plan's context (workloads, settings) by ``fork``; where fork
is unavailable the tasks run inline.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import queue as queue_mod
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Progress(Protocol):
    def expect(self, tasks: int, weight: float) -> None: ...

    def plan(self, stage: str, tasks: int, weight: float) -> None: ...

    def sim(self, label: str) -> None: ...

    def task_done(self, label: str, weight: float) -> None: ...


_STATE: dict[str, Any] = {}  # the context forked workers inherit; one plan at a time per process


def context() -> Any:
    return _STATE["context"]


def report_sim(label: str) -> None:
    """Called by a task at each simulation it starts: straight to the bar inline, via a queue from a worker."""
    q = _STATE.get("queue")
    if q is not None and _STATE.get("worker"):
        q.put(label)
        return
    progress = _STATE.get("progress")
    if progress is not None:
        progress.sim(label)


def _mark_worker() -> None:
    _STATE["worker"] = True


class Runner:
    def __init__(self, ctx: Any, jobs: int = 1, progress: Progress | None = None) -> None:
        if jobs < 1:
            raise ValueError("jobs must be at least 1")
        self.progress = progress
        self.jobs = jobs if jobs == 1 or "fork" in mp.get_all_start_methods() else 1
        _STATE.clear()
        _STATE.update(context=ctx, progress=progress)
        self._pool: cf.ProcessPoolExecutor | None = None

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            fork = mp.get_context("fork")
            _STATE["queue"] = fork.Queue()
            self._pool = cf.ProcessPoolExecutor(self.jobs, mp_context=fork, initializer=_mark_worker)
        return self._pool

    def expect(self, tasks: int, weight: float) -> None:
        """Tell the progress display the whole run's tasks and weight before the first ``map``."""
        if self.progress is not None:
            self.progress.expect(tasks, weight)

    def map(
        self,
        stage: str,
        fn: Callable[[T], R],
        items: Sequence[T],
        weights: Sequence[float],
        labels: Sequence[str],
    ) -> list[R]:
        """``fn`` over ``items``, results in item order; ``fn`` must be a module-level function."""
        if self.progress is not None:
            self.progress.plan(stage, len(items), float(sum(weights)))
        if self.jobs == 1 or len(items) <= 1:
            out = []
            for item, w, label in zip(items, weights, labels, strict=True):
                out.append(fn(item))
                if self.progress is not None:
                    self.progress.task_done(label, w)
            return out
        pool = self._executor()
        futures = {pool.submit(fn, item): k for k, item in enumerate(items)}
        results: dict[int, R] = {}
        pending = set(futures)
        try:
            while pending:
                done, pending = cf.wait(pending, timeout=0.25, return_when=cf.FIRST_COMPLETED)
                self._drain()
                for f in done:
                    k = futures[f]
                    results[k] = f.result()
                    if self.progress is not None:
                        self.progress.task_done(labels[k], weights[k])
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        self._drain()
        return [results[k] for k in range(len(items))]

    def _drain(self) -> None:
        q = _STATE.get("queue")
        if q is None:
            return
        while True:
            try:
                label = q.get_nowait()
            except queue_mod.Empty:
                return
            if self.progress is not None:
                self.progress.sim(label)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        _STATE.clear()
