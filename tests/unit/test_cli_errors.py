"""How the CLI answers mistakes: a user's mistake is one line naming the option and exit 2; a bug keeps
its traceback; a closed pipe is no error; a mistyped option is reported by its subcommand with the
nearest real options."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from extproc import __version__, cli


def test_a_typo_in_a_subcommand_flag_names_the_subcommand_and_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["serve", "--routing-b-shrot", "4096"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "budget-router serve: error: unrecognized arguments: --routing-b-shrot 4096" in err
    assert "did you mean --routing-b-short" in err
    assert err.startswith("usage: budget-router serve")  # the subcommand's usage, not the top level's


def test_an_unknown_flag_without_a_near_match_still_names_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["config", "--zzzz"])
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzz" in err and "did you mean" not in err


def test_envoy_config_refuses_a_sampling_envoy_would_reject(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["envoy-config", "--trace-sampling", "200"]) == 2
    assert "error: --trace-sampling: must be within [0, 100], got '200'" in capsys.readouterr().err


def test_a_command_argument_error_is_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["envoy-config", "--listen", "nowhere"]) == 2
    assert "budget-router envoy-config: error: --listen: expected HOST:PORT, got 'nowhere'" in capsys.readouterr().err


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A ValueError from deep inside (not a command's own argument check) is a bug, not bad input."""

    def broken(_: object) -> int:
        return int("not a number")  # raises inside builtins, called from this test module

    fake = SimpleNamespace(add_arguments=lambda parser: None, run=broken)
    monkeypatch.setitem(cli.COMMANDS, "broken", ("tests.fake_broken", "a command with a bug"))
    monkeypatch.setitem(sys.modules, "tests.fake_broken", fake)
    with pytest.raises(ValueError, match="not a number"):
        cli.main(["broken"])


def test_config_doc_into_a_closed_pipe_exits_quietly() -> None:
    proc = subprocess.run(
        f"{sys.executable} -m extproc.cli config --doc | head -1", shell=True, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert proc.stdout.startswith("| option |")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr


def test_one_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.strip() == f"budget-router {__version__}"


def test_list_and_choice_options_show_what_one_value_looks_like(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    out = capsys.readouterr().out
    assert "--estimator-kind {linear,ratio}" in out and "--routing-no-output-limit {reserve,long}" in out
    assert "--live-load-envoy-admin HOST:PORT" in out and "--calibration-priors A,B,..." in out
