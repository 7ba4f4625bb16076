"""``budget-router config``: show the effective settings or the documented options table."""

from __future__ import annotations

import argparse

import yaml

from extproc.config import add_config_flags, config_from_args, describe, to_dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--doc", action="store_true", help="print the Markdown table of every option")
    add_config_flags(parser)


def run(args: argparse.Namespace) -> int:
    if args.doc:
        print(describe())
        return 0
    print(yaml.safe_dump(to_dict(config_from_args(args)), sort_keys=False), end="")
    return 0
