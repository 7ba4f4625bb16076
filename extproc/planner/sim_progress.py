"""Progress of a plan on stderr: a redrawn bar on a terminal, one line per simulation in a log.

A plan sizes a known number of fleets (replications x (1 + thresholds)) but each takes as many
simulations as its search needs, so the total and the ETA are projected from the fleets done so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


def _duration(seconds: float) -> str:
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
        min_interval_s: float = 0.2,
        fleets: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval_s = min_interval_s
        self.tty = self.stream.isatty()
        self.fleets = fleets  # fleets the plan sizes in all
        self.fleets_done = 0
        self.runs = 0
        self._runs_at_fleet_done = 0
        self._clock = clock
        self._label = ""
        self._last = 0.0
        self._start = self._now()
        self._fleet_time = 0.0

    def _now(self) -> float:
        return self._clock()

    def estimate(self) -> tuple[int | None, float | None]:
        """Projected total simulations and seconds left, from the fleets finished so far."""
        if not self.fleets or not self.fleets_done:
            return None, None
        per_fleet = self._runs_at_fleet_done / self.fleets_done
        total = max(self.runs, round(per_fleet * self.fleets))
        left = (self._fleet_time / self.fleets_done) * (self.fleets - self.fleets_done)
        return total, max(0.0, left - (self._now() - self._start - self._fleet_time))

    def status(self) -> str:
        total, left = self.estimate()
        sims = f"sim {self.runs}" + (f" of ~{total}" if total else "")
        fleets = f"fleet {min(self.fleets_done + 1, self.fleets)}/{self.fleets}" if self.fleets else ""
        eta = f"ETA {_duration(left)}" if left is not None else "ETA --"
        return f"{sims}  {fleets}  {_duration(self._now() - self._start)} elapsed, {eta}"

    def fleet_done(self) -> None:
        self.fleets_done += 1
        self._runs_at_fleet_done = self.runs
        self._fleet_time = self._now() - self._start

    def __call__(self, label: str, fraction: float) -> None:
        now = self._now()
        if label != self._label:
            self.runs += 1
            self._label = label
            if not self.tty:  # a log file gets one line per simulation, not a redraw per tick
                print(f"[plan] {self.status()}: {label}", file=self.stream, flush=True)
        if not self.tty or (now - self._last < self.min_interval_s and fraction < 1.0):
            return
        self._last = now
        filled = int(self.width * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "." * (self.width - filled)
        line = f"\r[{bar}] {100 * fraction:5.1f}%  {self.status()}  {label[:34]:<34}"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        print(f"[plan] {self.runs} simulations in {_duration(self._now() - self._start)}", file=self.stream, flush=True)
