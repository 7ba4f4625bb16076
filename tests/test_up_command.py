"""``budget-router up``'s own decisions, without starting Envoy: what it refuses, what it reports for
an interrupted replay, and how it stops children when interrupted again while stopping (real child
processes that take their time to drain)."""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.commands.up import offered_window
from extproc.stack.process import ManagedProcess
from extproc.stack.stack import Stack, StackOptions
from tests.waiting import until

# Prints "ready", then notes every SIGTERM and carries on: a child that drains for a long time.
SLOW_TO_STOP = [
    sys.executable, "-c",
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: print('term', flush=True))\n"
    "print('ready', flush=True)\n"
    "time.sleep(120)\n",
]  # fmt: skip


def test_up_help_shows_defaults_and_variables(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["up", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert (
        "--concurrency N Replay client: cap on requests in flight. (default: 512; env: BUDGET_ROUTER_UP_CONCURRENCY)"
        in text
    )
    assert "--latency-scale X" in text and "(default: 0.25; env: BUDGET_ROUTER_UP_LATENCY_SCALE)" in text


@pytest.mark.parametrize("argv", [["--rate", "5"], ["--requests", "10"], ["--json", "r.json"], ["--seed", "3"]])
def test_a_replay_option_without_a_replay_is_an_error_naming_it(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["up", *argv]) == 2
    err = capsys.readouterr().err
    flag = {"--requests": "--count", "--seed": "--workload-seed"}.get(argv[0], argv[0])
    assert f"budget-router up: error: {flag}: only with a replay (give --replay TRACE" in err


def test_an_interrupted_replay_offers_over_the_time_it_ran() -> None:
    assert offered_window(60.0, 75.0, interrupted=False) == 60.0  # finished: the planned horizon
    assert offered_window(60.0, 5.0, interrupted=True) == 5.0  # stopped after 5 s: those 5 s
    assert offered_window(60.0, 80.0, interrupted=True) == 60.0  # stopped while draining the last answers


def test_a_failed_replay_start_leaves_no_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert main(["up", "--replay", str(tmp_path / "missing.csv"), "--requests", "10"]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_stack_that_never_started_removes_the_run_dir_it_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    made = Stack(StackOptions())
    assert made.run_dir.parent == tmp_path and made.run_dir.is_dir()
    made.stop()
    assert not made.run_dir.exists()
    given = Stack(StackOptions(run_dir=tmp_path / "mine"))
    given.stop()
    assert (tmp_path / "mine").is_dir()  # the user's own folder stays


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_a_second_interrupt_while_stopping_kills_every_child(tmp_path: Path, sigint_raises: None) -> None:
    """Without it, the Ctrl-C raised inside one child's drain ended the stop there, and the children
    not yet stopped kept running and holding their ports."""
    stack = Stack(StackOptions(run_dir=tmp_path, router_grace_s=60.0))
    children = [ManagedProcess(f"child-{i}", SLOW_TO_STOP, tmp_path / f"child-{i}.log") for i in range(3)]
    for child in children:
        child.start()
        stack._spawned.append(child)
    try:
        for child in children:
            until(lambda c=child: "ready" in c.log_tail().splitlines(), f"{child.name} ready", timeout_s=30)
        draining = children[-1]  # stopped first (the newest child first)

        def interrupt_once_it_drains() -> None:
            until(lambda: "term" in draining.log_tail().splitlines(), "the first child told to drain", timeout_s=30)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt_once_it_drains, daemon=True).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            stack.stop()
        took = time.monotonic() - started
        assert [c.name for c in children if c.alive] == []
        assert took < 30, f"stop waited {took:.0f} s for drains after the second interrupt"
        assert [c.proc.returncode for c in children if c.proc is not None] == [-signal.SIGKILL] * 3
    finally:
        for child in children:
            child.kill()
