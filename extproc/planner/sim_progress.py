"""A one-line progress bar on stderr: long plans run dozens of simulations."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    def __init__(self, stream: TextIO | None = None, width: int = 28, min_interval_s: float = 0.2) -> None:
        self.stream = stream or sys.stderr
        self.width = width
        self.min_interval_s = min_interval_s
        self.tty = self.stream.isatty()
        self.runs = 0
        self._label = ""
        self._last = 0.0
        self._start = time.monotonic()

    def __call__(self, label: str, fraction: float) -> None:
        now = time.monotonic()
        if label != self._label:
            self.runs += 1
            self._label = label
            if not self.tty:  # a log file gets one line per simulation, not a redraw per tick
                print(f"[plan] simulation {self.runs}: {label}", file=self.stream, flush=True)
        if not self.tty or (now - self._last < self.min_interval_s and fraction < 1.0):
            return
        self._last = now
        filled = int(self.width * min(max(fraction, 0.0), 1.0))
        bar = "#" * filled + "." * (self.width - filled)
        line = f"\r[{bar}] {100 * fraction:5.1f}%  sim {self.runs}  {now - self._start:6.0f}s  {label[:40]:<40}"
        self.stream.write(line)
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
