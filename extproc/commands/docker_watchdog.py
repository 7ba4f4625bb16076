"""``budget-router docker-watchdog``: restart compose services Docker's restart policy leaves dead.

Runs as the compose stack's ``watchdog`` service (the router image, the Docker socket mounted); see
``extproc.deploy.watchdog`` for what it restarts and what it leaves alone."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from extproc.deploy.watchdog import DEFAULT_LABEL, DEFAULT_SOCKET, DockerAPI, Watchdog, own_project
from extproc.options import Command, above, command_env_prefix, opt


@dataclass(frozen=True)
class WatchdogOptions:
    """Every option of ``budget-router docker-watchdog``."""

    socket: Path = opt(Path(DEFAULT_SOCKET), "The Docker Engine API socket.", "PATH")
    project: str | None = opt(
        None, "Compose project to watch.", "NAME", shown="the one this container belongs to", example="brtest"
    )
    label: str = opt(DEFAULT_LABEL, "Only containers with this label.", "KEY=VALUE", example="io.example.restart=yes")
    interval_s: float = opt(1.0, "Time between sweeps.", "SECONDS", check=above(0))


OPTIONS = Command(WatchdogOptions, command_env_prefix("docker-watchdog"))
add_arguments = OPTIONS.add_arguments


def prepare(o: WatchdogOptions) -> WatchdogOptions:
    """Nothing to derive: the watchdog runs with its options as given."""
    return o


def run(args: argparse.Namespace) -> int:
    o = prepare(OPTIONS.from_args(args))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s docker-watchdog: %(message)s")
    api = DockerAPI(str(o.socket))
    project = o.project or own_project(api)
    logging.getLogger("budget_router.watchdog").warning(
        "watching compose project %r (label %s) every %.1f s", project, o.label, o.interval_s
    )
    Watchdog(api, project, o.label).run(o.interval_s)
    return 0
