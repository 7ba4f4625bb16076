"""`budget-router serve` as a real process: ready line, health, SIGTERM drains, saves state, exits 0."""

import os
import signal
import subprocess
import sys
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
    proc2, _, line = start(state)
    try:
        assert "state peers loaded: 1" in line
    finally:
        proc2.send_signal(signal.SIGTERM)
        assert proc2.wait(15) == 0


def test_bad_flag_exits_nonzero_with_message():
    r = subprocess.run([*EXE, "serve", "--routing-b-short", "-5"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "b_short must be > 0" in r.stderr
