"""``budget-router deploy-config``: render docker-compose.yml and deploy/kubernetes/ from the fleet's shape.

Both come from ``extproc.deploy`` (one shape for the pools' flags and the router's); ``--check``
fails when a committed file differs from a fresh render, which is what the tests run."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from extproc.deploy import compose, kubernetes
from extproc.options import Command, command_env_prefix, opt


@dataclass(frozen=True)
class DeployConfigOptions:
    """Every option of ``budget-router deploy-config``."""

    root: Path = opt(Path("."), "The checkout to write into (or check).", "DIR")
    check: bool = opt(False, "Write nothing; exit 1 if a file is not the render.")


OPTIONS = Command(DeployConfigOptions, command_env_prefix("deploy-config"))
add_arguments = OPTIONS.add_arguments


def rendered() -> dict[Path, str]:
    """Every generated file, by its path in the checkout."""
    files = {Path("docker-compose.yml"): compose.render()}
    files |= {Path("deploy/kubernetes") / name: text for name, text in kubernetes.render().items()}
    return files


@dataclass(frozen=True)
class Rendering:
    files: dict[Path, str]  # absolute path -> text
    check: bool


def prepare(o: DeployConfigOptions) -> Rendering:
    return Rendering({o.root / rel: text for rel, text in rendered().items()}, o.check)


def run(args: argparse.Namespace) -> int:
    r = prepare(OPTIONS.from_args(args))
    stale = []
    for path, text in r.files.items():
        if r.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    if stale:
        print(f"budget-router deploy-config: out of date: {', '.join(stale)}; run {compose.COMMAND}", file=sys.stderr)
        return 1
    return 0
