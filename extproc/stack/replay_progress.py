"""A one-line progress bar on stderr (redrawn in place on a terminal, a line every 10 s in a log)."""

from __future__ import annotations

import asyncio
import sys
from typing import TextIO

from extproc.stack.replay import Outcome, Replayer

WIDTH = 28


class Progress:
    def __init__(self, replayer: Replayer, horizon_s: float, stream: TextIO | None = None) -> None:
        self.replayer = replayer
        self.horizon_s = max(horizon_s, 1e-9)
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.done = 0
        self.failed = 0

    def count(self, outcome: Outcome) -> None:
        self.done += 1
        self.failed += bool(outcome.error)

    def line(self) -> str:
        r = self.replayer
        total = len(r.planned)
        frac = min(1.0, self.done / total) if total else 1.0
        bar = "#" * int(frac * WIDTH) + "." * (WIDTH - int(frac * WIDTH))
        return (
            f"[{bar}] {self.done}/{total} done, {r.sent} sent, {r.in_flight} in flight, "
            f"{self.failed} failed, {r.elapsed():.0f}/{self.horizon_s:.0f}s"
        )

    def draw(self, final: bool = False) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    async def run(self) -> None:
        interval = 0.5 if self.tty else 10.0
        while True:
            await asyncio.sleep(interval)
            self.draw()
