"""``budget-router config``: show the effective settings or the documented options tables."""

from __future__ import annotations

import argparse
import importlib

import yaml

from extproc.config import add_config_flags, config_from_args, describe, to_dict

# Commands with options of their own (``OPTIONS`` in their module), for ``--doc COMMAND``.
COMMAND_MODULES = {
    "up": "extproc.commands.up",
    "plan": "extproc.commands.plan",
    "emulate": "extproc.commands.emulate",
    "envoy-config": "extproc.commands.envoy_config",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--doc", nargs="?", const="serve", choices=("serve", *COMMAND_MODULES), metavar="COMMAND",
        help="print the Markdown table of every option of the router (serve, the default) or of COMMAND: "
        + ", ".join(COMMAND_MODULES),
    )  # fmt: skip
    add_config_flags(parser)


def command_doc(command: str) -> str:
    """The options table of ``command``, as docs/cli.md keeps it."""
    if command == "serve":
        return describe()
    return str(importlib.import_module(COMMAND_MODULES[command]).OPTIONS.describe())


def run(args: argparse.Namespace) -> int:
    if args.doc:
        print(command_doc(args.doc))
        return 0
    print(yaml.safe_dump(to_dict(config_from_args(args)), sort_keys=False), end="")
    return 0
