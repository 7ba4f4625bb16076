"""`budget-router serve` as a real process: ready line, health, SIGTERM drains, saves state, exits 0."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import orjson
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg

from tests.envoy_play import request_body, request_headers, response_body, response_headers

EXE = [sys.executable, "-m", "extproc.cli"]


def start(state: Path) -> tuple[subprocess.Popen, int, str]:
    proc = subprocess.Popen(
        [
            *EXE,
            "serve",
            "--server-listen",
            "127.0.0.1:0",
            "--calibration-state-file",
            str(state),
            "--telemetry-metrics-port",
            "0",
            "--server-grace-period-s",
            "5",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert "listening on" in line, line + proc.stderr.read()
    return proc, int(line.split("listening on ")[1].split()[0].rsplit(":", 1)[1]), line


def start_and_stop(state: Path) -> tuple[str, str]:
    """Start, then SIGTERM (exit 0 within 15 s): the ready line and stderr."""
    proc, _, line = start(state)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    return line, proc.stderr.read()


def learn_once(port: int) -> None:
    body = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "word " * 200}]})
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        msgs = [
            request_headers(),
            request_body(body),
            response_headers(),
            response_body(b'{"usage":{"prompt_tokens":205,"completion_tokens":5}}'),
        ]
        list(epg.ExternalProcessorStub(ch).Process(iter(msgs)))


def test_sigterm_saves_state_and_exits_zero_and_restart_is_warm(tmp_path):
    state = tmp_path / "state.json"
    proc, port, _ = start(state)
    try:
        learn_once(port)
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    saved = orjson.loads(state.read_bytes())
    (entry,) = saved["replicas"].values()
    assert entry["categories"]["prose"]["samples"] == 1
    line, _ = start_and_stop(state)
    assert "state peers loaded: 1" in line


def test_bad_flag_exits_nonzero_with_message():
    r = subprocess.run([*EXE, "serve", "--routing-b-short", "-5"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "b_short must be > 0" in r.stderr


def test_serve_reports_every_bad_option_at_once_and_never_binds():
    argv = ["--server-listen", "127.0.0.1:-1", "--telemetry-metrics-port", "-1", "--telemetry-log-level", "LOUD"]
    r = subprocess.run([*EXE, "serve", *argv], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "listening" not in r.stdout and "Traceback" not in r.stderr
    for option in ("server.listen", "telemetry.metrics_port", "telemetry.log_level"):
        assert option in r.stderr, r.stderr


def test_a_malformed_state_file_never_stops_the_router_from_starting(tmp_path):
    state = tmp_path / "state.json"
    good = {"updated": time.time(), "categories": {"prose": {"mean": 4.4, "dev": 0.2, "samples": 50}}}
    bad = {"updated": [1], "categories": {}}
    state.write_bytes(orjson.dumps({"version": 1, "replicas": {"good": good, "bad": bad, "soon": {"updated": "soon"}}}))
    line, stderr = start_and_stop(state)
    assert "state peers loaded: 1" in line and "skipped 2 malformed entries" in stderr
    replicas = set(orjson.loads(state.read_bytes())["replicas"])
    assert "good" in replicas and not replicas & {"bad", "soon"} and len(replicas) == 2


async def test_serving_freezes_the_startup_objects_out_of_the_collectors_reach(tmp_path: Path) -> None:
    """A full collection over every module and table stalls all streams (~0.1 s on a busy machine):
    what startup built is frozen before the first stream, so later full collections skip it."""
    import asyncio
    import gc

    from extproc.commands.serve import serve
    from extproc.config import load_config

    overrides = {
        "server": {"listen": "127.0.0.1:0", "grace_period_s": 0.1},
        "calibration": {"state_file": str(tmp_path / "state.json")},
        "telemetry": {"metrics_port": 0},
    }
    cfg = load_config(env={}, overrides=overrides)
    gc.unfreeze()
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(cfg, ready=ready, stop=stop))
    try:
        await asyncio.wait_for(ready.wait(), 30)
        assert gc.get_freeze_count() > 10_000  # the modules, config and router, not a handful
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
        gc.unfreeze()
