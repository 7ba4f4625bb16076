"""The embedded stack's pieces on their own: process-group cleanup, the access-log and state-file
readers, and the report's arithmetic on hand-made outcomes."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import orjson
import pytest

from extproc.algorithm import CalibrationParams
from extproc.stack.access_log import AccessLog
from extproc.stack.process import ManagedProcess, ProcessFailed
from extproc.stack.replay import Outcome, PlannedRequest, emulator_template_tokens
from extproc.stack.replay_report import build_report, convergence, estimate_errors, render, true_ratios
from extproc.stack.router_view import CalibrationTimeline, RatioPoint, read_decisions


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_stop_reaches_grandchildren_that_ignore_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    script = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n"
    )
    proc = ManagedProcess("stubborn", [sys.executable, "-c", script], tmp_path / "stubborn.log")
    proc.start()
    proc.wait_until(pid_file.exists, 10, "writing its child's pid")
    time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert proc.pid is not None and _alive(grandchild)
    proc.stop(grace_s=0.3)
    assert not proc.alive
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_wait_until_fails_fast_with_the_log_when_the_process_dies(tmp_path: Path) -> None:
    proc = ManagedProcess("dies", [sys.executable, "-c", "print('boom: cannot bind'); raise SystemExit(3)"],
                          tmp_path / "dies.log")  # fmt: skip
    proc.start()
    with pytest.raises(ProcessFailed, match=r"(?s)exited \(status 3\).*boom: cannot bind"):
        proc.wait_until(lambda: False, 30, "healthy")


def test_access_log_reads_partial_lines_and_names_the_serving_pool(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(path)
    assert log.poll() == 0  # no file yet
    first = orjson.dumps({"request_id": "a", "pool": "short", "cluster": "pool_short_failover", "status": 200})
    # The failover cluster served from the long pool: the endpoint's pool counts, not the cluster's name.
    second = orjson.dumps({"request_id": "b", "pool": "long", "cluster": "pool_short_failover", "status": 200})
    local = orjson.dumps({"request_id": "c", "pool": None, "cluster": None, "status": 413})
    path.write_bytes(first + b"\nnot json\n" + local + b"\n" + second[:10])
    assert log.poll() == 2
    assert log.pool("a") == "short" and log.pool_of("b") == "none" and log.pool("c") == "-"
    with open(path, "ab") as fh:
        fh.write(second[10:] + b"\n")
    assert log.poll() == 1 and log.pool("b") == "long"
    with pytest.raises(TimeoutError):
        log.entry("missing", timeout_s=0.1)


def test_timeline_recomputes_c_star_and_skips_unchanged_saves(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    timeline = CalibrationTimeline(state, CalibrationParams(gamma=1.0, min_samples=10))
    timeline.poll(0.0)
    assert timeline.points == []

    def save(updated: float, mean: float, dev: float, samples: int) -> None:
        entry = {"updated": updated, "categories": {"cjk": {"mean": mean, "dev": dev, "samples": samples}}}
        replicas = {"old": {"updated": 0, "categories": {}}, "r": entry}
        state.write_bytes(orjson.dumps({"version": 1, "replicas": replicas}))

    save(1.0, 3.0, 0.2, 5)
    timeline.poll(1.0)
    timeline.poll(1.5)  # same snapshot: no new point
    save(2.0, 3.0, 0.2, 20)
    timeline.poll(2.0)
    assert [(p.t_s, p.samples) for p in timeline.series("cjk")] == [(1.0, 5), (2.0, 20)]
    assert timeline.series("cjk")[-1].ratio == pytest.approx(2.8)


def test_read_decisions_keeps_exchange_lines_only(tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    log.write_text(
        "budget-router listening on 127.0.0.1:1\n"
        '{"event":"exchange","request_id":"x","pool":"short"}\n'
        '{"msg":"shutting down"}\n{"event":"exchange","request_id":""}\n{broken\n'
    )
    expected = {"x": {"event": "exchange", "request_id": "x", "pool": "short"}}
    assert read_decisions([log, tmp_path / "absent.log"]) == expected


def _outcome(i: int, category: str, tokens: int, nbytes: int, status: int = 200, error: str = "",
             latency: float = 1.0, usage: int | None = None) -> Outcome:
    req = PlannedRequest(f"r{i}", float(i), category, tokens, 16, tokens + emulator_template_tokens(),
                         bool(i % 2), nbytes, b"{}")
    return Outcome(req, sent_s=float(i), latency_s=latency, first_byte_s=latency / 2, status=status, error=error,
                   usage={"prompt_tokens": usage} if usage is not None else {})  # fmt: skip


def test_report_counts_pools_errors_and_estimates() -> None:
    template = emulator_template_tokens()
    outcomes = [
        _outcome(0, "prose", 1000, 4400, usage=1000 + template),
        _outcome(1, "prose", 1000, 4400, latency=3.0),
        _outcome(2, "cjk", 6000, 18000, status=400, error="context_overflow"),
        _outcome(3, "code", 20000, 80000),
    ]
    pools = {"r0": "short", "r1": "short", "r2": "short", "r3": "long"}
    decisions = {
        "r0": {"category": "prose", "reason": "threshold", "estimated_prompt_tokens": 1100 + template,
               "spilled": False},
        "r1": {"category": "prose", "reason": "threshold", "estimated_prompt_tokens": 900 + template,
               "prompt_tokens": 1000 + template},
        "r2": {"category": "cjk", "reason": "threshold", "estimated_prompt_tokens": 4500},
        "r3": {"category": "prose", "reason": "threshold", "estimated_prompt_tokens": 21000, "spilled": True},
    }  # fmt: skip
    points = [RatioPoint(1.0, "prose", 4.2, 0.1, 1, 4.0), RatioPoint(9.0, "prose", 4.4, 0.1, 60, 4.3)]
    run = {"trace": "t", "sent": 4, "planned": 4, "replay_s": 4.0, "wall_s": 5.0, "stream_share": 0.5,
           "short_context": 8192, "need_long": 1}  # fmt: skip
    report = build_report(run, outcomes, pools, decisions, points)
    short, long = report["pools"]["short"], report["pools"]["long"]
    assert (short["requests"], short["ok"], short["context_overflow"], short["non_2xx"]) == (3, 2, 1, {"400": 1})
    assert short["latency_p50_s"] == pytest.approx(2.0) and long["requests"] == 1
    assert report["routing"]["spilled"] == 1 and report["routing"]["without_router"] == 0
    errors = report["estimate_error_pct"]
    assert errors["truth_from"] == {"client": 1, "router": 1, "constructed": 2}
    assert errors["usage_differs_from_construction"] == 0
    prose = errors["by_category"]["prose"]
    assert prose["n"] == 3 and prose["underestimates"] == 1
    cjk_error = (4500 - 6000 - template) / (6000 + template) * 100
    assert errors["by_category"]["cjk"]["worst_under"] == pytest.approx(cjk_error)
    # r3 was routed as prose by the router: it counts towards prose's true ratio, not code's.
    assert true_ratios(outcomes, decisions) == {"cjk": 3.0, "prose": pytest.approx(88800 / 22000)}
    text = render(report)
    assert "Context-overflow errors in the short pool: 1 (goal: 0)" in text
    assert "1 of 4 requests need more" in text


def test_convergence_picks_first_after_n_and_final() -> None:
    points = [RatioPoint(float(n), "code", 4.0 + n / 1000, 0.1, n, 3.9) for n in (0, 1, 20, 50, 80)]
    conv = convergence(points, {"code": 4.08})["code"]
    assert conv["first"]["samples"] == 1 and conv["after_50"]["samples"] == 50 and conv["final"]["samples"] == 80
    assert conv["final_mean_error_pct"] == pytest.approx(0.0)
    assert estimate_errors([], {})["by_category"] == {}
