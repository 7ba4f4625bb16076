"""``budget-router config``: show the effective settings or the documented options tables."""

from __future__ import annotations

import argparse
import importlib

import yaml

from extproc.config import add_config_flags, config_from_args, describe, to_dict
from extproc.options import COMMAND_SCOPES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--doc", nargs="?", const="serve", choices=("serve", *COMMAND_SCOPES), metavar="COMMAND",
        help="print the Markdown table of every option of the router (serve, the default) or of COMMAND: "
        + ", ".join(COMMAND_SCOPES),
    )  # fmt: skip
    add_config_flags(parser)


def command_doc(command: str) -> str:
    """The options table of ``command``, as docs/cli.md keeps it."""
    if command == "serve":
        return describe()
    module = importlib.import_module(f"extproc.commands.{command.replace('-', '_')}")  # a command's own module
    return str(module.OPTIONS.describe())


def run(args: argparse.Namespace) -> int:
    if args.doc:
        print(command_doc(args.doc))
        return 0
    print(yaml.safe_dump(to_dict(config_from_args(args)), sort_keys=False), end="")
    return 0
