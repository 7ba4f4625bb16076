"""``budget-router engine [prepare|command]``: the real vLLM engines outside the stack.

``prepare`` (the default) does the slow first-use work ahead of time (install the CPU engine, build the
tiny model) and says where everything is, so CI or an image build can pay it once. ``command`` prints
the exact environment and command line each pool's server runs with, to start one by hand, in a unit
file or a container, or to compare with a fleet of one's own (it prepares first where needed).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from extproc.commands.fleet_args import EngineRequest, FleetOptions, engine_fleet
from extproc.engines.cache import cache_root
from extproc.engines.launch import EngineFleet
from extproc.engines.support import cpu_engine_unsupported
from extproc.options import Command, command_env_prefix, group, opt
from extproc.stack.stack import PoolSpec

ACTIONS = ("prepare", "command")


@dataclass(frozen=True)
class EngineOptions:
    fleet: FleetOptions = group(FleetOptions, title="pools and engines")
    pool: str = opt("both", "command: which pool's command to print.", choices=("short", "long", "both"))
    host: str = opt("127.0.0.1", "command: the address the servers listen on.", "HOST", example="0.0.0.0")
    port: int = opt(
        8000, "command: the short pool's port (the long pool's is the next).",
        check=(lambda v: 1 <= v <= 65534, "must be within 1..65534"),
    )  # fmt: skip
    run_dir: Path = opt(Path("engine-run"), "command: where the servers keep their caches and temporary files.")


OPTIONS = Command(EngineOptions, command_env_prefix("engine"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", nargs="?", choices=ACTIONS, default="prepare",
        help="prepare (default): install the engine and build the model where missing, and print where they are; "
        "command: print each pool's serve command",
    )  # fmt: skip
    OPTIONS.add_arguments(parser)


@dataclass(frozen=True)
class EngineRun:
    """What ``engine`` does, before anything is installed."""

    request: EngineRequest
    pools: tuple[PoolSpec, PoolSpec]
    pool: str
    host: str
    port: int
    run_dir: Path


def prepare(o: EngineOptions) -> EngineRun:
    return EngineRun(o.fleet.request(), o.fleet.shape("vllm"), o.pool, o.host, o.port, o.run_dir)


def _say(line: str) -> None:
    print(f"budget-router engine: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    r = prepare(OPTIONS.from_args(args))
    started = time.monotonic()
    fleet = engine_fleet(r.request, _say)
    if args.action == "prepare":
        print(f"engine cache: {cache_root()}")
        print(f"engine:       {fleet.label}")
        print(f"model:        {fleet.model} (served as {fleet.served_name})")
        print(f"ready in {time.monotonic() - started:.0f} s; `budget-router up --engine vllm` starts the stack on it")
        reason = cpu_engine_unsupported()
        if reason:
            print(f"note: {reason}")
        return 0
    print(commands(fleet, r))
    return 0


def commands(fleet: EngineFleet, r: EngineRun) -> str:
    """Shell lines: the engine's own variables, then the command, per pool asked for."""
    out = []
    for index, spec in enumerate(r.pools):
        if r.pool not in (spec.name, "both"):
            continue
        server = fleet.pool(index, spec.max_model_len, spec.max_num_seqs)
        env = server.env(r.run_dir.resolve(), f"pool-{spec.name}", base={})
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        argv = " ".join(shlex.quote(a) for a in server.argv(r.host, r.port + index))
        out.append(f"# {spec.name} pool\n{assignments} \\\n  {argv}")
    return "\n".join(out)
