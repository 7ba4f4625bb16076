"""``budget-router up`` as a user runs it: a short replay to a JSON report, and the interactive stack
stopped by SIGTERM. Both must leave no process behind and every port free."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import orjson
import pytest
import yaml

from extproc.stack.probes import http_get, port_open
from extproc.stack.stack import child_env
from tests.e2e.console import BANNER, Console, running_up
from tests.waiting import until

pytestmark = pytest.mark.e2e


def _up(*args: str) -> list[str]:
    return [sys.executable, "-m", "extproc.cli", "up", *args]


def _ports(run_dir: Path) -> set[int]:
    """Every port the stack used, read from the Envoy config it rendered."""
    text = (run_dir / "envoy.yaml").read_text()
    return {int(p) for p in re.findall(r"port_value: (\d+)", text)}


def _leftovers(run_dir: Path) -> list[str]:
    """Processes whose command line names the run dir (Envoy's config, the routers' state file)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(run_dir) in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found


def _assert_clean(run_dir: Path) -> None:
    ports = _ports(run_dir)
    assert len(ports) >= 4
    assert [p for p in ports if port_open("127.0.0.1", p)] == []
    assert _leftovers(run_dir) == []


def test_replay_prints_a_report_and_writes_json(tmp_path: Path) -> None:
    run_dir, report_path, png = tmp_path / "run", tmp_path / "report.json", tmp_path / "ratios.png"
    argv = _up(
        "--replay", "synthetic", "--requests", "40", "--rate", "40", "--latency-scale", "0",
        "--stream-share", "0.5", "--seed", "4", "--run-dir", str(run_dir), "--json", str(report_path),
        "--png", str(png),
    )  # fmt: skip
    done = subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Context-overflow errors in the short pool: none" in done.stdout
    data = orjson.loads(report_path.read_bytes())
    report, rows = data["report"], data["requests"]
    assert len(rows) == 40 and report["run"]["completed"] == 40
    pools = report["pools"]
    assert pools["short"]["requests"] + pools["long"]["requests"] == 40
    # Seed 4 draws 5 requests from the heavy tail past 8K; each must go long, and the rest mostly short.
    assert report["run"]["need_long"] == 5
    assert pools["long"]["requests"] >= 5 and pools["short"]["requests"] >= 30
    assert pools["short"]["context_overflow"] == 0
    # Every request the router routed short really fits the short pool's window.
    for row in rows:
        if row["pool"] == "short":
            assert row["prompt_tokens"] + row["output_tokens"] < 8192
    assert report["routing"]["router_decisions"] == 40
    assert report["ratios"] and data["ratio_timeline"]
    assert png.stat().st_size > 10_000
    _assert_clean(run_dir)


def test_interactive_stack_serves_until_sigterm(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_up("--latency-scale", "0", "--run-dir", str(run_dir)) as (_, url):
        models = http_get(url + "/v1/models")
        assert models[0] == 200 and b"emulated" in models[1]
    _assert_clean(run_dir)
    config = yaml.safe_load((run_dir / "envoy.yaml").read_text())
    assert config["static_resources"]["listeners"][0]["address"]["socket_address"]["address"] == "127.0.0.1"


def _wait_for_line(stream: IO[str], prefix: str, timeout_s: float) -> list[str]:
    """Read ``stream`` on a thread until a line starts with ``prefix``; fail the test if it never comes.

    A blocking ``readline`` in the test's own thread cannot honour a deadline, so a stack that never
    became ready would be noticed only after the replay had run to its end.
    """
    seen: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        for line in stream:
            seen.append(line)
            if line.startswith(prefix):
                ready.set()
        ready.set()  # EOF: the process ended before it was ready

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout_s) or not any(line.startswith(prefix) for line in seen):
        pytest.fail(f"no {prefix!r} line within {timeout_s:.0f} s; stderr so far:\n{''.join(seen)[-3000:]}")
    return seen


def test_ctrl_c_mid_replay_reports_what_finished_and_cleans_up(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    argv = _up("--replay", "azure-conv", "--rate", "20", "--duration", "60", "--run-dir", str(run_dir))
    proc = subprocess.Popen(argv, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None and proc.stdout is not None
        _wait_for_line(proc.stderr, "stack up:", timeout_s=90)
        access_log = run_dir / "envoy-access.log"
        until(  # some requests answered, so the report has something to say
            lambda: access_log.read_bytes().count(b"\n") if access_log.exists() else 0,
            "a few answered requests in Envoy's access log",
            lambda n: n >= 5,
            timeout_s=60,
        )
        assert proc.poll() is None, "the replay ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out = proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    match = re.search(r"Replay azure-conv: (\d+) requests", out)
    assert match and 0 < int(match.group(1)) < 1_000, out
    # offered over the seconds it ran, not the 60 s it was planned for (a Poisson 20 req/s)
    offered = re.search(r"\(([\d.]+) req/s offered", out)
    assert offered and 8 < float(offered.group(1)) < 40, out
    _assert_clean(run_dir)


def test_a_second_sigterm_while_stopping_still_stops_everything(tmp_path: Path) -> None:
    """The impatient operator: SIGTERM, and SIGTERM again while the stack drains. Every child must be
    gone and every port free (before, pools and sometimes the router kept running)."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        _up("--latency-scale", "0", "--run-dir", str(run_dir)), env=child_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        console = Console(proc.stdout)
        console.wait_for(BANNER, 90)
        proc.send_signal(signal.SIGTERM)
        console.wait_for(r"^stopping", 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) in (0, 130)  # 130 when the second signal cut the drain short, 0 if it came late
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _assert_clean(run_dir)
