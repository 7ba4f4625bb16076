"""The stack's supervisor with real child processes: a child that dies is restarted after the backoff
and announced, a crash loop backs off, and once the stack is stopping nothing is restarted.

Also the small decisions ``up`` makes up front: which Prometheus ports the replicas get and where
traces go (``--otlp`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``), with a clear error for a bad value.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.commands.up import OTLP_ENV, otlp_collector
from extproc.stack.probes import free_port, http_get, http_ok
from extproc.stack.process import ManagedProcess
from extproc.stack.stack import StackOptions, metrics_ports, router_argv
from extproc.stack.supervisor import Backoff, Supervisor, Watched, exit_reason
from tests.waiting import until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]


class Lines:
    """Collects the supervisor's console lines; ``wait`` blocks until one matches."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, line: str) -> None:
        with self._cond:
            self.lines.append(line)
            self._cond.notify_all()

    def wait(self, fragment: str, timeout_s: float = 10.0) -> str:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not any(fragment in line for line in self.lines):
                left = deadline - time.monotonic()
                assert left > 0, f"no line with {fragment!r}; got {self.lines}"
                self._cond.wait(left)
        return next(line for line in self.lines if fragment in line)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[ManagedProcess]]:
    made: list[ManagedProcess] = []
    yield made
    for p in made:
        p.stop(1.0)


def _proc(tmp_path: Path, procs: list[ManagedProcess], name: str, argv: list[str]) -> ManagedProcess:
    p = ManagedProcess(name, argv, tmp_path / f"{name}.log")
    procs.append(p)
    p.start()
    return p


def test_backoff_doubles_to_its_cap() -> None:
    b = Backoff(first_s=0.5, max_s=3.0)
    assert [b.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    with pytest.raises(ValueError):
        Backoff(first_s=0)


def test_exit_reason_names_the_signal() -> None:
    assert exit_reason(-9) == "was killed by SIGKILL"
    assert exit_reason(3) == "exited with status 3"


def test_a_killed_child_is_restarted_and_announced(tmp_path: Path, procs: list[ManagedProcess]) -> None:
    child = _proc(tmp_path, procs, "router-0", SLEEPER)
    say = Lines()
    sup = Supervisor(
        [Watched(child, lambda: child.alive, "Envoy fails open meanwhile")],
        ManagedProcess.start,
        say,
        Backoff(first_s=0.2),
        interval_s=0.02,
    )
    sup.start()
    try:
        first_pid = child.pid
        assert first_pid is not None
        child.kill()
        died = say.wait("was killed by SIGKILL")
        assert (
            died == f"router-0 (pid {first_pid}) was killed by SIGKILL; restarting in 0.2 s; Envoy fails open meanwhile"
        )
        say.wait("serving again")
        assert child.alive and child.pid != first_pid
        assert say.lines[1] == f"router-0 restarted (pid {child.pid})"
        assert sup.restarts == 1
        assert "$ " in (tmp_path / "router-0.log").read_text()  # each start is marked in the same log
    finally:
        sup.stop()


def test_a_crash_loop_backs_off(tmp_path: Path, procs: list[ManagedProcess]) -> None:
    child = _proc(tmp_path, procs, "pool-long", CRASHER)
    say = Lines()
    sup = Supervisor(
        [Watched(child, lambda: False)], ManagedProcess.start, say, Backoff(first_s=0.05, max_s=0.2), interval_s=0.01
    )
    sup.start()
    try:
        say.wait("restarting in 0.2 s")
    finally:
        sup.stop()
    delays = [line.split("restarting in ")[1] for line in say.lines if "restarting in" in line]
    assert delays[:3] == ["0.05 s", "0.1 s", "0.2 s"]
    assert all("exited with status 3" in line for line in say.lines if "restarting" in line)


def test_nothing_restarts_once_the_stack_refuses(tmp_path: Path, procs: list[ManagedProcess]) -> None:
    """The stack's starter raises once stop() began: the supervisor ends instead of racing it."""
    child = _proc(tmp_path, procs, "router-0", SLEEPER)
    say = Lines()

    def refuse(proc: ManagedProcess) -> None:
        raise RuntimeError("the stack is stopping")

    sup = Supervisor([Watched(child, lambda: True)], refuse, say, Backoff(first_s=0.05), interval_s=0.01)
    sup.start()
    child.stop(1.0)
    say.wait("was killed by SIGTERM")
    assert sup._thread is not None
    sup._thread.join(5.0)
    assert not sup._thread.is_alive() and not child.alive and sup.restarts == 0


def test_reap_kills_what_a_dead_parent_left_in_its_group(tmp_path: Path, procs: list[ManagedProcess]) -> None:
    script = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
    script += "print('grandchild', 'up', flush=True); time.sleep(60)"
    parent = _proc(tmp_path, procs, "parent", [sys.executable, "-c", script])
    deadline = time.monotonic() + 10
    while "grandchild up" not in parent.log_tail():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert parent.proc is not None
    pgid = parent.proc.pid
    parent.proc.send_signal(signal.SIGKILL)  # the parent alone, as a crash would
    parent.proc.wait(5)
    assert _group_alive(pgid)
    parent.reap()
    deadline = time.monotonic() + 5
    while _group_alive(pgid):
        assert time.monotonic() < deadline, "the orphaned child survived reap()"
        time.sleep(0.05)


def test_a_hung_child_is_killed_and_restarted(tmp_path: Path, procs: list[ManagedProcess]) -> None:
    """SIGSTOP: the process never exits, only its probe tells. It is killed after ``hang_after_s``
    without an answer, restarted on its port, and announced once it answers again."""
    port = free_port()
    server = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    child = _proc(tmp_path, procs, "pool-short", server)
    url = f"http://127.0.0.1:{port}/"
    until(lambda: http_ok(url), "the child serving", timeout_s=20)
    say = Lines()
    probes: list[float] = []

    def probe() -> bool:
        probes.append(time.monotonic())
        return http_get(url, timeout_s=0.3)[0] == 200

    sup = Supervisor(
        [Watched(child, probe)], ManagedProcess.start, say, Backoff(first_s=0.1), interval_s=0.02,
        hang_after_s=1.0, probe_interval_s=0.1,
    )  # fmt: skip
    sup.start()
    try:
        first_pid = child.pid
        assert first_pid is not None
        # A serving child is never taken for a hung one: probed for longer than hang_after_s, still there.
        until(lambda: probes and probes[-1] - probes[0] > 1.5, "probes spanning 1.5 s", timeout_s=20)
        assert sup.restarts == 0 and child.pid == first_pid and not say.lines
        os.kill(first_pid, signal.SIGSTOP)
        hung = say.wait("stopped answering")
        assert hung.startswith(f"pool-short (pid {first_pid}) stopped answering its health probe for 1.")
        assert "killed it; restarting in 0.1 s" in hung
        say.wait("serving again", timeout_s=20)
        assert child.alive and child.pid != first_pid and http_ok(url)
    finally:
        sup.stop()


def test_hang_detection_needs_a_probe_interval_below_the_limit() -> None:
    with pytest.raises(ValueError, match="hang_after_s"):
        Supervisor([], ManagedProcess.start, print, hang_after_s=0.5, probe_interval_s=0.5)
    with pytest.raises(ValueError, match="hang_after_s"):
        StackOptions(hang_after_s=0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# -- what up decides up front ----------------------------------------------------------------


def test_metrics_ports_prefer_the_default_and_skip_a_taken_one() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        got = metrics_ports(StackOptions(router_replicas=3, metrics_port=port), "127.0.0.1", workers=1)
    assert got[0] != port and len(set(got)) == 3
    assert metrics_ports(StackOptions(router_replicas=2), "127.0.0.1", 1) == [0, 0]  # off unless asked


def test_metrics_ports_leave_room_for_each_replicas_workers() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        base = probe.getsockname()[1]
    got = metrics_ports(StackOptions(router_replicas=2, metrics_port=base), "127.0.0.1", workers=2)
    assert abs(got[1] - got[0]) >= 2  # replica 0 takes base and base + 1 (its two workers)


def test_router_argv_carries_metrics_and_tracing() -> None:
    o = StackOptions(otlp=("127.0.0.1", 4317))
    argv = router_argv(o, 9002, Path("state.json"), metrics_port=9464)
    joined = " ".join(argv)
    assert "--telemetry-metrics-port 9464" in joined
    assert "--telemetry-traces true --telemetry-otlp-endpoint 127.0.0.1:4317" in joined
    assert "--telemetry-traces" not in " ".join(router_argv(StackOptions(), 9002, Path("s.json")))


@pytest.mark.parametrize(
    ("flag", "env", "want"),
    [
        ("collector:4317", "", ("collector", 4317)),
        (None, "http://otel:4318", ("otel", 4318)),
        (None, "https://otel.example", ("otel.example", 4317)),
        (None, "127.0.0.1:5555", ("127.0.0.1", 5555)),
        ("127.0.0.1:1", "http://ignored:2", ("127.0.0.1", 1)),  # the flag wins
        (None, "", None),
        ("", "http://ignored:2", None),  # an explicit empty flag turns tracing off
    ],
)
def test_otlp_collector_from_flag_or_standard_env(flag: str | None, env: str, want: object) -> None:
    assert otlp_collector(flag, {OTLP_ENV: env}) == want


@pytest.mark.parametrize("bad", ["collector", "http://:4317", "host:99999", "http://h:notaport"])
def test_up_rejects_a_bad_otlp_endpoint_with_exit_2(bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--otlp", bad]) == 2
    assert "--otlp" in capsys.readouterr().err


def test_up_rejects_a_bad_metrics_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["up", "--metrics-port", "70000"]) == 2
    assert "--metrics-port" in capsys.readouterr().err
