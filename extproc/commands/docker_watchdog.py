"""``budget-router docker-watchdog``: restart compose services Docker's restart policy leaves dead.

Runs as the compose stack's ``watchdog`` service (the router image, the Docker socket mounted); see
``extproc.deploy.watchdog`` for what it restarts and what it leaves alone."""

from __future__ import annotations

import argparse
import logging

from extproc.deploy.watchdog import DEFAULT_LABEL, DEFAULT_SOCKET, DockerAPI, Watchdog, own_project


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", default=DEFAULT_SOCKET, metavar="PATH", help="Docker Engine API socket")
    parser.add_argument(
        "--project", metavar="NAME", help="compose project to watch (default: the one this container belongs to)"
    )
    parser.add_argument("--label", default=DEFAULT_LABEL, metavar="KEY=VALUE", help="only containers with this label")
    parser.add_argument("--interval-s", type=float, default=1.0, metavar="SECONDS", help="time between sweeps")


def run(args: argparse.Namespace) -> int:
    if args.interval_s <= 0:
        raise ValueError(f"--interval-s must be > 0, got {args.interval_s}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s docker-watchdog: %(message)s")
    api = DockerAPI(args.socket)
    project = args.project or own_project(api)
    logging.getLogger("budget_router.watchdog").warning(
        "watching compose project %r (label %s) every %.1f s", project, args.label, args.interval_s
    )
    Watchdog(api, project, args.label).run(args.interval_s)
    return 0
