"""One supervised child process: its own process group, its output in a log file, a clean stop.

Every child runs in a new session so that a stop reaches everything it spawned (the router's worker
processes, Envoy's threads) with one ``killpg`` and nothing is left behind holding a port. Stopping is
SIGTERM to the group (the router drains and saves its calibration), then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path


class ProcessFailed(RuntimeError):
    """A child exited or never became healthy; the message carries the tail of its log."""

    @property
    def port_conflict(self) -> bool:
        """Whether the log reads like a lost race for a just-released port (worth a retry)."""
        return bool(_PORT_CONFLICT.search(str(self)))


_PORT_CONFLICT = re.compile(r"address already in use|cannot listen|cannot bind|failed to bind", re.I)


class ManagedProcess:
    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n$ {' '.join(self.argv)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, probe: Callable[[], bool], timeout_s: float, what: str) -> None:
        """Poll ``probe`` until it says yes; fail fast (with the log) if the process dies first."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            if not self.alive:
                code = self.proc.returncode if self.proc is not None else None
                raise ProcessFailed(f"{self.name} exited (status {code}) before {what}:\n{self.log_tail()}")
            if probe():
                return
            if time.monotonic() > deadline:
                raise ProcessFailed(f"{self.name} not {what} after {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def reap(self) -> None:
        """SIGKILL whatever is left of the group of a child that already exited (its workers)."""
        self._signal_group(signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL the whole group at once (the crash case); reaps the child."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def stop(self, grace_s: float = 10.0) -> int | None:
        """SIGTERM the group, wait up to ``grace_s``, then SIGKILL what is left. Returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace_s)
        # Grandchildren may outlive a well-behaved parent: sweep the group in every case.
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return self.proc.returncode
