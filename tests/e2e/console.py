"""A child process's console read on a thread, each line with the time it arrived, so a test can wait
for a line with a deadline (a blocking ``readline`` cannot) and compare when things happened."""

from __future__ import annotations

import contextlib
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO

import pytest

from extproc.stack.stack import child_env


@dataclass
class Console:
    """``up``'s merged stdout/stderr, read on a thread with the time each line arrived."""

    stream: IO[str]
    lines: list[tuple[float, str]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.stream:
            with self.changed:
                self.lines.append((time.monotonic(), line.rstrip("\n")))
                self.changed.notify_all()

    def wait_for(self, pattern: str, timeout_s: float) -> tuple[float, re.Match[str]]:
        """The first line matching ``pattern``; fails the test when none comes in time."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while True:
                for t, line in self.lines:
                    if match := regex.search(line):
                        return t, match
                left = deadline - time.monotonic()
                if left <= 0:
                    text = "\n".join(line for _, line in self.lines)[-3000:]
                    pytest.fail(f"no line matching {pattern!r} within {timeout_s:.0f} s; console:\n{text}")
                self.changed.wait(left)


BANNER = r"Envoy \(OpenAI API\):\s+(http://\S+)/v1/chat/completions"


@contextlib.contextmanager
def running_up(*args: str, env: dict[str, str] | None = None) -> Iterator[tuple[Console, str]]:
    """``budget-router up ARGS`` (interactive) until its banner: yields its console and Envoy's URL.
    On leaving, SIGTERM must stop it cleanly (status 0) within 30 s; it is killed if anything failed."""
    argv = [sys.executable, "-m", "extproc.cli", "up", *args]
    proc = subprocess.Popen(argv, env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        console = Console(proc.stdout)
        _, match = console.wait_for(BANNER, 90)
        yield console, match.group(1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
