"""``budget-router emulate`` as a real process: it announces its address, serves, stops on signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from extproc.cli import main

CMD = [sys.executable, "-m", "extproc.cli", "emulate"]


@pytest.fixture
def emulator_proc() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CMD, "--port", "0", "--latency-scale", "0", "--max-model-len", "512", "--max-num-seqs", "4",
         "--served-model-name", "cli-model", "--fault-usage-lie", "zero"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def _url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("emulator listening on http://127.0.0.1:"), line
    return line.split()[-1]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_starts_serves_and_exits_cleanly_on_signal(emulator_proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    url = _url(emulator_proc)
    with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
        assert resp.status == 200
    req = urllib.request.Request(
        f"{url}/v1/chat/completions",
        data=json.dumps(
            {"model": "cli-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        ).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        usage = json.loads(resp.read())["usage"]
    assert usage["completion_tokens"] == 3 and usage["prompt_tokens"] == 0  # --fault-usage-lie zero
    emulator_proc.send_signal(sig)
    assert emulator_proc.wait(timeout=10) == 0


def run_in_process(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    try:
        rc = main(["emulate", *args])
    except SystemExit as exc:  # argparse's own errors
        rc = int(exc.code or 0)
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-num-seqs", "0"], "max_num_seqs must be >= 1"),
        (["--max-model-len", "4096", "--kv-cache-tokens", "100"], "cannot hold one sequence"),
        (["--fault-error-rate", "1.5"], "error_rate must be within"),
        (["--encoding", "gpt2"], "--encoding: 'gpt2' is not one of"),
        (["--latency-scale", "fast"], "--latency-scale: cannot use 'fast' as float"),
    ],
)
def test_bad_values_exit_non_zero_with_a_message(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rc, err = run_in_process(["--port", "0", *args], capsys, monkeypatch)
    assert rc == 2 and needle in err


def test_busy_port_is_a_clear_error(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        rc, err = run_in_process(["--port", str(s.getsockname()[1])], capsys, monkeypatch)
    assert rc == 1 and "cannot listen" in err


def test_vllm_behaviour_defaults_to_032_and_takes_its_old_name(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from extproc.commands.emulate import OPTIONS
    from extproc.emulator.errors import DEFAULT_VLLM_BEHAVIOUR
    from extproc.options import ConfigError

    parser = argparse.ArgumentParser()
    OPTIONS.add_arguments(parser)

    def config_from(argv: list[str]) -> Any:
        return OPTIONS.from_args(parser.parse_args(argv), env={})

    assert config_from([]).vllm_behaviour == DEFAULT_VLLM_BEHAVIOUR == "v0.32"
    assert config_from(["--vllm-behaviour", "legacy"]).vllm_behaviour == "legacy"
    assert config_from(["--context-error-style", "v0.18"]).vllm_behaviour == "v0.18"
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    assert "--vllm-behaviour {v0.32,v0.18,v0.16,v0.11,legacy,requested}" in text and "(default: v0.32;" in text
    with pytest.raises(ConfigError, match=r"--vllm-behaviour: '0\.5' is not one of"):
        config_from(["--vllm-behaviour", "0.5"])
