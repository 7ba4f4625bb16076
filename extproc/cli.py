"""``budget-router`` entry point. Subcommands live in their own modules and are imported lazily so
that ``budget-router emulate`` does not pay for OpenTelemetry and ``serve`` does not import numpy."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import sys
from typing import Any

from extproc import __version__

# name -> (module, one-line help). Each module exposes add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("extproc.commands.serve", "run the ext_proc gRPC server Envoy talks to"),
    "emulate": ("extproc.commands.emulate", "run a vLLM-compatible emulator (no GPU needed)"),
    "up": ("extproc.commands.up", "start the embedded stack: Envoy + router + two emulator pools"),
    "plan": ("extproc.commands.plan", "size a dual-pool fleet from a trace (simulator + cost model)"),
    "envoy-config": ("extproc.commands.envoy_config", "render the Envoy config for given ports"),
    "config": ("extproc.commands.config", "print the effective configuration or the options table"),
    "deploy-config": ("extproc.commands.deploy_config", "render docker-compose.yml and the Kubernetes manifests"),
    "docker-watchdog": ("extproc.commands.docker_watchdog", "restart compose services docker kill or a hang left dead"),
}
# The pyproject extra each subcommand needs beyond the lean core (which is all `serve` needs).
EXTRAS: dict[str, str] = {"emulate": "emulator", "up": "stack", "plan": "planner"}


def _missing_extra(command: str, exc: ModuleNotFoundError) -> int:
    extra = EXTRAS.get(command)
    hint = f"; install it with: pip install 'budget-router[{extra}]'" if extra else ""
    print(f"budget-router {command}: error: missing package {exc.name!r}{hint}", file=sys.stderr)
    return 2


class _Parser(argparse.ArgumentParser):
    """An unknown option is reported by the subcommand it was given to, with the closest real options
    (``serve --routing-b-shrot`` names ``--routing-b-short``), instead of the top-level usage."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self._subcommand_parser(getattr(ns, "command", None))
            target = sub or self
            unknown = " ".join(extras)
            hints = sorted({m for e in extras if e.startswith("-") for m in _close(e.split("=")[0], target)})
            suggestion = f" (did you mean {', '.join(hints)}?)" if hints else ""
            target.error(f"unrecognized arguments: {unknown}{suggestion}")
        return ns

    def _subcommand_parser(self, name: str | None) -> argparse.ArgumentParser | None:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                return action.choices[name]
        return None


def _close(option: str, parser: argparse.ArgumentParser) -> list[str]:
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    return difflib.get_close_matches(option, known, n=3, cutoff=0.75)


def build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """The parser, with only the ``wanted`` subcommand's options loaded (the others' imports are heavy)."""
    parser = _Parser(prog="budget-router", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"budget-router {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        # allow_abbrev=False: "--routing-b-shor 100" is a typo to report, not --routing-b-short
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if wanted == name:
            importlib.import_module(module).add_arguments(p)
    return parser


def _user_error(command: str, exc: BaseException) -> int:
    for line in str(exc).splitlines() or [""]:  # a ConfigError lists every problem, one a line
        print(f"budget-router {command}: error: {line}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    wanted = next((a for a in argv if not a.startswith("-")), None)
    try:
        parser = build_parser(wanted)
    except ModuleNotFoundError as exc:
        return _missing_extra(wanted or "", exc)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args) or 0)
    except ModuleNotFoundError as exc:  # a lazily imported optional dependency
        if exc.name and not exc.name.startswith("extproc"):
            return _missing_extra(args.command, exc)
        raise
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `budget-router config --doc | head -1`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 141
    except Exception as exc:
        # Bad input is a message naming the option and exit 2 (ConfigError, and the ValueError or
        # FileNotFoundError a command raises about its own arguments); anything else is a bug and
        # keeps its traceback.
        from extproc.config import ConfigError

        about_arguments = isinstance(exc, ValueError | FileNotFoundError) and _raised_by_command(exc)
        if isinstance(exc, ConfigError) or about_arguments:
            return _user_error(args.command, exc)
        raise


def _raised_by_command(exc: BaseException) -> bool:
    """Whether the error was raised in a command module's own code (its argument checks), not deeper."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    if last is None:
        return False
    module = str(last.tb_frame.f_globals.get("__name__", ""))
    return module.startswith(_ARGUMENT_CHECKERS)


# Code whose ValueErrors are about what a user gave: the commands' own checks, addresses, the Envoy
# layout's limits, workload files and flags, the stack's options and its Envoy binary.
_ARGUMENT_CHECKERS = (
    "extproc.commands.",
    "extproc.addresses",
    "extproc.gateway.envoy_config",
    "extproc.workload.",
    "extproc.stack.stack",
)


if __name__ == "__main__":
    sys.exit(main())
