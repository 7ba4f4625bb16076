"""Settings refused up front: exit 2, a message naming the option, no traceback (issue 25).

Before, each of these was accepted (or crashed later with a traceback): unknown categories, a
routing header name with CR/LF, an empty header value, a misspelled environment variable (silently
ignored), a key given twice in the YAML file (the last silently won), a listen address that cannot
be bound (exit 1 with a traceback), a busy metrics port (only logged), and a port another router
already holds (joined silently with ``--server-workers``, splitting its traffic).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from extproc.cli import main
from extproc.stack.probes import free_port, grpc_serving
from extproc.stack.process import ManagedProcess
from extproc.stack.stack import child_env
from tests.waiting import until


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--categories-enabled", "prose,klingon"], {}, "categories.enabled"),
        (["--calibration-priors", "klingon=2.0"], {}, "calibration.priors"),
        (["--routing-header-name", "x-pool\r\nx-evil: 1"], {}, "routing.header_name"),
        (["--routing-reason-header", "x reason"], {}, "routing.reason_header"),
        (["--routing-short-value", ""], {}, "routing.short_value"),
        (["--routing-long-value", "lo\nng"], {}, "routing.long_value"),
        ([], {"BUDGET_ROUTER_ROUTIN_B_SHORT": "4096"}, "BUDGET_ROUTER_ROUTING_B_SHORT"),
        ([], {"BUDGET_ROUTER_CALIBRATION_INSTANCE_ID": "a\tb"}, "calibration.instance_id"),
    ],
    ids=["category", "prior", "crlf_header", "space_reason_header", "empty_short", "newline_long", "env_typo",
         "instance_id_tab"],
)  # fmt: skip
def test_bad_settings_exit_2_naming_the_option(
    argv: list[str],
    env: dict[str, str],
    named: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["config", *argv]) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_other_tools_variables_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BUDGET_ROUTER_CONFORMANCE_URL", "http://x")  # a test suite's, not ours
    assert main(["config"]) == 0


def test_a_key_twice_in_the_config_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "router.yaml"
    path.write_text("routing:\n  b_short: 4096\n  b_short: 2048\n")
    assert main(["config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "duplicate key 'b_short'" in err and str(path) in err


def serve(*flags: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "extproc.cli", "serve", "--calibration-state-file", "", *flags]
    return subprocess.run(argv, env=child_env(), capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.mark.parametrize("listen", ["203.0.113.7:9002", "no-such-host.invalid:9002"])
def test_a_listen_address_that_cannot_be_bound_exits_2(listen: str) -> None:
    done = serve("--server-listen", listen, "--telemetry-metrics-port", "0")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "server.listen" in done.stderr and "Traceback" not in done.stderr


def test_a_busy_metrics_port_exits_2() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = serve("--server-listen", f"127.0.0.1:{free_port()}", "--telemetry-metrics-port", str(port))
    assert done.returncode == 2, done.stderr[-2000:]
    assert "telemetry.metrics_port" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(("first", "second"), [(2, 2), (2, 1), (1, 2)])
def test_a_port_another_router_holds_is_refused(tmp_path: Path, first: int, second: int) -> None:
    port = free_port()
    flags = ("--server-listen", f"127.0.0.1:{port}", "--telemetry-metrics-port", "0", "--calibration-state-file", "")
    argv = [sys.executable, "-m", "extproc.cli", "serve", "--server-workers", str(first), *flags]
    holder = ManagedProcess("holder", argv, tmp_path / "holder.log", child_env())
    holder.start()
    try:
        until(lambda: grpc_serving(f"127.0.0.1:{port}"), "the first router serving", timeout_s=60)
        done = serve("--server-workers", str(second), "--server-listen", f"127.0.0.1:{port}",
                     "--telemetry-metrics-port", "0")  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert "server.listen" in done.stderr and "Traceback" not in done.stderr
        assert holder.alive
    finally:
        holder.stop(5.0)
