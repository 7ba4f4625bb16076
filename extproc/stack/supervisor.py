"""Keeps the embedded stack's processes running: a child that exits, or stops answering its health
probe, is restarted with backoff.

A crashed router must cost what it costs in production (Envoy fails open to the long pool until the
replica is back) and not a total outage; a dead pool likewise comes back on its old port, which is
the only one Envoy's static config knows. The supervisor runs on its own thread, says on the console
what happened and when the process serves again, and stops for good once the stack is stopping.

A hung process (SIGSTOP, a deadlock, a busy loop) never exits, so watching exits alone would leave it
in place forever: Envoy fails open around it, but routing never comes back. A second thread probes
every serving child (the same probe that said it was ready) every ``probe_interval_s``; one that has
not answered for ``hang_after_s`` is SIGKILLed and goes down the restart path of a crash.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from extproc.stack.process import ManagedProcess


@dataclass(frozen=True)
class Backoff:
    """Restart delays: ``first_s`` doubling up to ``max_s``; a process that stayed up ``reset_after_s``
    starts the sequence over, so one crash a day never waits the maximum but a crash loop does."""

    first_s: float = 0.5
    max_s: float = 10.0
    reset_after_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.max_s:
            raise ValueError("backoff needs 0 < first_s <= max_s")

    def delay(self, failures: int) -> float:
        """Seconds to wait before restart number ``failures`` (1-based) of an unbroken crash series."""
        return min(self.max_s, self.first_s * 2 ** max(failures - 1, 0))


@dataclass
class Watched:
    """One supervised child and what it means for traffic while it is down."""

    proc: ManagedProcess
    ready: Callable[[], bool]  # a quick probe: does the restarted process serve yet?
    while_down: str = ""  # e.g. "Envoy sends every request to the long pool meanwhile"
    failures: int = 0  # crashes in the current series (reset once it stays up)
    up_since: float = field(default_factory=time.monotonic)
    down_since: float | None = None
    restart_at: float | None = None
    awaiting_ready: bool = False
    last_answer: float = field(default_factory=time.monotonic)  # when its probe last passed (hang check)


def exit_reason(code: int | None) -> str:
    if code is None:
        return "exited"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Polls every ``interval_s``; ``start`` is the stack's guarded starter (it raises once the stack
    is stopping, which ends the supervisor); ``say`` prints one console line."""

    def __init__(
        self,
        watched: Sequence[Watched],
        start: Callable[[ManagedProcess], object],
        say: Callable[[str], None],
        backoff: Backoff | None = None,
        interval_s: float = 0.1,
        hang_after_s: float | None = None,
        probe_interval_s: float = 0.5,
    ) -> None:
        """``hang_after_s`` None: exits only (no probing); else a serving child whose probe has not
        passed for that long is killed and restarted."""
        if hang_after_s is not None and not hang_after_s > probe_interval_s > 0:
            raise ValueError("hang detection needs hang_after_s > probe_interval_s > 0")
        self.watched = list(watched)
        self._start = start
        self._say = say
        self.backoff = backoff or Backoff()
        self.interval_s = interval_s
        self.hang_after_s = hang_after_s
        self.probe_interval_s = probe_interval_s
        self.restarts = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        targets = [(self._run, "stack-supervisor")]
        if self.hang_after_s is not None:
            targets.append((self._probe_loop, "stack-prober"))
        self._threads = [threading.Thread(target=t, name=name, daemon=True) for t, name in targets]
        for thread in self._threads:
            thread.start()

    @property
    def _thread(self) -> threading.Thread | None:
        return self._threads[0] if self._threads else None

    def stop(self) -> None:
        """Stop watching (before the stack stops its children, so no stop is mistaken for a crash)."""
        self._stop.set()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(10.0)

    def _probe_loop(self) -> None:
        """Probe every serving child in turn; a probe blocks up to its own timeout, so this runs apart
        from the exit watch (a hung child must not delay noticing a dead one)."""
        while not self._stop.wait(self.probe_interval_s):
            for w in self.watched:
                if self._stop.is_set():
                    return
                if w.restart_at is None and not w.awaiting_ready and w.proc.alive and w.ready():
                    w.last_answer = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.tick(time.monotonic())
            except RuntimeError:  # the stack refused a start: it is stopping
                return

    def tick(self, now: float) -> None:
        """One pass over every child: notice deaths, restart those whose delay is over, announce
        the ones that serve again."""
        for w in self.watched:
            if self._stop.is_set():
                return
            if w.restart_at is None and not w.proc.alive:
                self._died(w, now)
            elif w.restart_at is None and not w.awaiting_ready and self._hung(w, now):
                silent = now - w.last_answer
                w.proc.kill()
                self._died(w, now, f"stopped answering its health probe for {silent:.1f} s; killed it")
            if w.restart_at is not None and now >= w.restart_at:
                w.restart_at = None
                self._start(w.proc)
                self.restarts += 1
                w.awaiting_ready = True
                w.up_since = time.monotonic()
                self._say(f"{w.proc.name} restarted (pid {w.proc.pid})")
            elif w.awaiting_ready and w.proc.alive and w.ready():
                w.awaiting_ready = False
                w.last_answer = time.monotonic()
                down = time.monotonic() - (w.down_since or now)
                self._say(f"{w.proc.name} serving again, {down:.1f} s after it went down")

    def _hung(self, w: Watched, now: float) -> bool:
        return self.hang_after_s is not None and w.proc.alive and now - w.last_answer > self.hang_after_s

    def _died(self, w: Watched, now: float, reason: str | None = None) -> None:
        code = w.proc.proc.returncode if w.proc.proc is not None else None
        w.proc.reap()  # a crashed parent may leave children holding its port
        w.failures = 1 if now - w.up_since >= self.backoff.reset_after_s and not w.awaiting_ready else w.failures + 1
        delay = self.backoff.delay(w.failures)
        if not w.awaiting_ready:
            w.down_since = now
        w.awaiting_ready = False
        w.restart_at = now + delay
        note = f"; {w.while_down}" if w.while_down else ""
        why = reason or exit_reason(code)
        self._say(f"{w.proc.name} (pid {w.proc.pid}) {why}; restarting in {delay:g} s{note}")
