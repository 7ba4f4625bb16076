"""``budget-router deploy-config``: render docker-compose.yml and deploy/kubernetes/ from the fleet's shape.

Both come from ``extproc.deploy`` (one shape for the pools' flags and the router's); ``--check``
fails when a committed file differs from a fresh render, which is what the tests run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from extproc.deploy import compose, kubernetes


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", type=Path, default=Path("."), metavar="DIR", help="the checkout to write into")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file is not the render")


def rendered() -> dict[Path, str]:
    files = {Path("docker-compose.yml"): compose.render()}
    files |= {Path("deploy/kubernetes") / name: text for name, text in kubernetes.render().items()}
    return files


def run(args: argparse.Namespace) -> int:
    stale = []
    for rel, text in rendered().items():
        path = args.root / rel
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(rel))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"budget-router deploy-config: out of date: {', '.join(stale)}; run {compose.COMMAND}", file=sys.stderr)
        return 1
    return 0
