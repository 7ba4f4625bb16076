"""Running one slow build step (pip, a model build) with its output in a log and a heartbeat on the
console, so that a first start that takes minutes says what it is doing instead of looking hung."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HEARTBEAT_S = 20.0


class StepFailed(RuntimeError):
    """A build step exited non-zero; the message carries its command and the tail of its log."""


def last_lines(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _latest_line(path: Path) -> str:
    """The newest log line worth showing (pip's per-index warnings are noise)."""
    tail = [line.strip() for line in last_lines(path, 20).splitlines() if line.strip()]
    useful = [line for line in tail if not line.startswith("WARNING")] or tail
    return useful[-1][:120] if useful else ""


def run_step(
    argv: Sequence[str],
    log: Path,
    what: str,
    say: Callable[[str], None],
    env: dict[str, str] | None = None,
    timeout_s: float = 3600.0,
    heartbeat_s: float = HEARTBEAT_S,
) -> float:
    """Run ``argv`` with stdout and stderr appended to ``log``; returns the seconds it took.

    Every ``heartbeat_s`` one console line gives the elapsed time and the step's latest log line. A
    non-zero exit or the timeout raises ``StepFailed`` with the log's tail."""
    started = time.monotonic()
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    next_beat = started + heartbeat_s
    while True:
        try:
            code = proc.wait(timeout=1.0)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now - started > timeout_s:
            proc.kill()
            proc.wait()
            raise StepFailed(f"{what}: no result after {timeout_s:.0f} s; log {log}:\n{last_lines(log)}")
        if now >= next_beat:
            next_beat = now + heartbeat_s
            say(f"{what}: {now - started:.0f} s ... {_latest_line(log)}")
    if code != 0:
        raise StepFailed(f"{what} failed (exit status {code}): {' '.join(argv)}\nlog {log}:\n{last_lines(log)}")
    return time.monotonic() - started
