"""Stopping a test's child process: SIGTERM, a grace period, then SIGKILL, never leaving a zombie."""

from __future__ import annotations

import subprocess


def terminate(proc: subprocess.Popen, timeout_s: float) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
