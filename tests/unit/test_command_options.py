"""Every option of every command reaches what it configures, field by field.

The options are not listed here: they are read from each command's settings class (``OPTIONS``), so
an option added tomorrow is tested tomorrow. For each one the test sets a value that differs from the
base run's, through the real CLI parser, and asserts that (1) the command's options object carries it,
(2) the object the command runs with (``prepare``: the Envoy layout, the plan's settings and workload,
the stack's options, the emulator's config) differs from the base run's, (3) the environment variable
named in ``--help`` sets the same value, and (4) ``--help`` shows the option's default and variable.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

import pytest

from extproc import cli
from extproc.config import Config, add_config_flags, config_from_args, load_config
from extproc.options import Command, Spec, _optional_of, specs

# What a command needs on its command line before it can run at all (a required option), with a
# value different from that option's declared example.
BASE: dict[str, list[str]] = {
    "plan": ["--trace", "azure-code", "--jobs", "1"],
    "up": ["--replay", "azure-code", "--requests", "100"],  # the replay's options need a replay
}
ROUTER_YAML = "routing:\n  header_name: x-from-file\n  b_short: 2048\n"
# The router's options that take free text: a value its validation accepts (the serve case below).
SERVE_EXAMPLES = {
    "server.listen": "127.0.0.1:9100", "server.event_loop": "asyncio", "routing.header_name": "x-pool",
    "routing.short_value": "small", "routing.long_value": "big", "routing.reason_header": "x-why",
    "routing.short_context": "16384", "routing.no_output_limit": "long",
    "live_load.short_endpoints": "127.0.0.1:8001", "live_load.long_endpoints": "127.0.0.1:8002",
    "live_load.envoy_admin": "127.0.0.1:9901", "live_load.short_cluster": "a", "live_load.long_cluster": "b",
    "live_load.metrics_path": "/m", "calibration.priors": "code=3.0", "calibration.state_file": "state.json",
    "estimator.kind": "ratio", "estimator.exact_band": "llama=llama3", "categories.enabled": "prose,code",
    "categories.default": "code", "telemetry.otlp_endpoint": "127.0.0.1:4317", "telemetry.service_name": "r",
    "telemetry.metrics_host": "0.0.0.0", "telemetry.provider_name": "sglang", "telemetry.log_level": "DEBUG",
}  # fmt: skip
# Router options that validation accepts only with another one set: (that one's flag, variable, value).
SERVE_NEEDS = {
    "estimator.engine_counts": (
        "--live-load-short-endpoints", "BUDGET_ROUTER_LIVE_LOAD_SHORT_ENDPOINTS", "127.0.0.1:8001",
    ),
}


def _commands() -> list[str]:
    return [name for name, (module, _) in cli.COMMANDS.items() if hasattr(importlib.import_module(module), "OPTIONS")]


def _module(command: str) -> Any:
    return importlib.import_module(cli.COMMANDS[command][0])


def _parse(command: str, argv: list[str]) -> argparse.Namespace:
    return cli.build_parser(command).parse_args([command, *argv])


def _value(obj: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        obj = getattr(obj, name)
    return obj


def _example(spec: Spec, base: Any, tmp_path: Path) -> list[str]:
    """An argv fragment that sets ``spec`` to something other than ``base`` (its value in the base run)."""
    meta = spec.meta
    if spec.env and spec.env.startswith("BUDGET_ROUTER_") and spec.name in SERVE_EXAMPLES and len(spec.path) == 2:
        return [f"{spec.flag}={SERVE_EXAMPLES[spec.name]}"]
    if spec.path[-1] == "config":  # the router's YAML file
        path = tmp_path / "router.yaml"
        path.write_text(ROUTER_YAML)
        return [spec.flag, str(path)]
    if meta.get("example") is not None:
        return [f"{spec.flag}={meta['example']}"]
    if spec.is_switch:
        return ["--no-" + spec.flag[2:]] if base else [spec.flag]
    if meta.get("choices"):
        return [spec.flag, next(c for c in meta["choices"] if c != base)]
    tp = _optional_of(spec.tp) or spec.tp
    if tp is int:
        return [spec.flag, "100" if base is None else str(base - 1 if base > 1 else base + 1)]
    if tp is float:
        return [spec.flag, "0.5" if not base else f"{base / 2:g}"]
    if tp is Path:
        return [spec.flag, str(tmp_path / "elsewhere")]
    raise AssertionError(f"{spec.flag}: give it an example= (the test cannot make a value of {spec.tp})")


def _env_text(fragment: list[str]) -> str:
    if len(fragment) == 2:
        return fragment[1]
    flag, sep, value = fragment[0].partition("=")
    if sep:
        return value
    return "false" if flag.startswith("--no-") else "true"  # a switch


def _cases() -> list[tuple[str, Spec]]:
    cases = [(command, spec) for command in _commands() for spec in _module(command).OPTIONS.options]
    return cases + [("serve", spec) for spec in specs(Config)]


def test_every_command_but_the_router_has_a_settings_class() -> None:
    """serve and config read the router's Config; every other command declares its own options."""
    assert set(_commands()) == set(cli.COMMANDS) - {"serve", "config"}
    for command in _commands():
        assert isinstance(_module(command).OPTIONS, Command)


@pytest.mark.parametrize(("command", "spec"), _cases(), ids=lambda c: c if isinstance(c, str) else c.flag)
def test_each_option_reaches_what_it_configures(
    command: str, spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in __import__("os").environ if k.startswith("BUDGET_ROUTER_")]:
        monkeypatch.delenv(key)  # the developer's own settings must not decide the test
    monkeypatch.chdir(tmp_path)
    base_argv = BASE.get(command, [])
    if command == "serve":
        parser = argparse.ArgumentParser()
        add_config_flags(parser)
        flag, variable, value = SERVE_NEEDS.get(spec.name, ("", "", ""))
        base_cfg = load_config(env={variable: value} if variable else {})
        fragment = _example(spec, _value(base_cfg, spec.path), tmp_path)
        changed = config_from_args(parser.parse_args([f"{flag}={value}", *fragment] if flag else fragment))
        assert _value(changed, spec.path) != _value(base_cfg, spec.path)
        if variable:
            monkeypatch.setenv(variable, value)
        monkeypatch.setenv(str(spec.env), _env_text(fragment))
        assert _value(load_config(env=__import__("os").environ), spec.path) == _value(changed, spec.path)
        return
    module = _module(command)
    options: Command = module.OPTIONS
    base = options.from_args(_parse(command, base_argv), env={})
    fragment = _example(spec, _value(base, spec.path), tmp_path)
    given = options.from_args(_parse(command, base_argv + fragment), env={})
    assert _value(given, spec.path) != _value(base, spec.path), f"{fragment} did not reach the options"
    assert module.prepare(given) != module.prepare(base), f"{fragment} changed nothing the command runs with"
    if spec.env is not None:
        rest = base_argv[:]
        for name in (spec.flag, *spec.meta.get("aliases", ())):
            if name in rest:  # a flag beats the variable: leave the base's own out
                del rest[rest.index(name) : rest.index(name) + 2]
        from_env = options.from_args(_parse(command, rest), env={spec.env: _env_text(fragment)})
        assert from_env == given, f"{spec.env} does not set what {spec.flag} sets"


@pytest.mark.parametrize("command", [*_commands(), "serve"])
def test_help_shows_every_default_and_variable(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere, even after a hyphen
    options = specs(Config) if command == "serve" else _module(command).OPTIONS.options
    for spec in options:
        assert spec.flag in text
        help_line = "".join(spec.help().replace("%%", "%").split())
        assert help_line in text, f"{spec.flag}: {help_line!r} not in --help"
        if spec.env:
            assert f"env:{spec.env}" in text


def test_a_bad_value_names_its_source(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", "--trace", "azure-code", "--util-cap", "2"]) == 2
    assert "plan: error: --util-cap: must be in (0, 1], got '2'" in capsys.readouterr().err
    monkeypatch.setenv("BUDGET_ROUTER_PLAN_UTIL_CAP", "2")
    assert cli.main(["plan", "--trace", "azure-code"]) == 2
    assert "error: BUDGET_ROUTER_PLAN_UTIL_CAP: must be in (0, 1]" in capsys.readouterr().err


def test_a_flag_beats_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module("plan")
    env = {"BUDGET_ROUTER_PLAN_MAX_SEQS": "64", "BUDGET_ROUTER_PLAN_WARMUP": "0.2"}
    o = module.OPTIONS.from_args(_parse("plan", ["--trace", "azure-code", "--max-seqs", "32"]), env=env)
    assert (o.max_seqs, o.warmup) == (32, 0.2)


@pytest.mark.parametrize("command", _commands())
def test_docs_cli_md_has_the_current_table(command: str) -> None:
    from extproc.commands.config import command_doc

    page = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    assert command_doc(command) in page, f"docs/cli.md is stale: paste `budget-router config --doc {command}`"


def test_no_command_variable_reads_as_a_router_variable() -> None:
    """The routers ``up`` starts inherit its environment: ``BUDGET_ROUTER_UP_*`` (or any command's)
    must never be taken for a ``BUDGET_ROUTER_<SECTION>_*`` of the router's own config, and the router's
    loader can skip exactly the prefixes ``COMMAND_SCOPES`` names."""
    from extproc.options import COMMAND_SCOPES, ENV_PREFIX, command_env_prefix

    assert set(COMMAND_SCOPES) == set(_commands())
    sections = [ENV_PREFIX + s.path[0].upper() + "_" for s in specs(Config)]
    for command in COMMAND_SCOPES:
        prefix = command_env_prefix(command)
        assert not any(prefix.startswith(s) or s.startswith(prefix) for s in sections), prefix
