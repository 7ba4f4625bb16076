"""``budget-router`` entry point. Subcommands live in their own modules and are imported lazily so
that ``budget-router emulate`` does not pay for OpenTelemetry and ``serve`` does not import numpy."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help). Each module exposes add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("extproc.commands.serve", "run the ext_proc gRPC server Envoy talks to"),
    "emulate": ("extproc.commands.emulate", "run a vLLM-compatible emulator (no GPU needed)"),
    "up": ("extproc.commands.up", "start the embedded stack: Envoy + router + two emulator pools"),
    "plan": ("extproc.commands.plan", "size a dual-pool fleet from a trace (simulator + cost model)"),
    "envoy-config": ("extproc.commands.envoy_config", "render the Envoy config for given ports"),
    "config": ("extproc.commands.config", "print the effective configuration or the options table"),
}
# The pyproject extra each subcommand needs beyond the lean core (which is all `serve` needs).
EXTRAS: dict[str, str] = {"emulate": "emulator", "up": "stack", "plan": "planner"}


def _missing_extra(command: str, exc: ModuleNotFoundError) -> int:
    extra = EXTRAS.get(command)
    hint = f"; install it with: pip install 'budget-router[{extra}]'" if extra else ""
    print(f"budget-router {command}: error: missing package {exc.name!r}{hint}", file=sys.stderr)
    return 2


def build_parser(wanted: str | None = None) -> argparse.ArgumentParser:
    """The parser, with only the ``wanted`` subcommand's options loaded (the others' imports are heavy)."""
    parser = argparse.ArgumentParser(prog="budget-router", description=__doc__, allow_abbrev=False)
    parser.add_argument("--version", action="version", version="budget-router 0.1.0")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        # allow_abbrev=False: "--routing-b-shor 100" is a typo to report, not --routing-b-short
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        if wanted == name:
            importlib.import_module(module).add_arguments(p)
    return parser


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
    except Exception as exc:  # the last line of defence: a message, not a traceback
        from extproc.config import ConfigError

        if isinstance(exc, ConfigError | FileNotFoundError | ValueError):
            for line in str(exc).splitlines() or [""]:  # a ConfigError lists every problem, one a line
                print(f"budget-router {args.command}: error: {line}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
