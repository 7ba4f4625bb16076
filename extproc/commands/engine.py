"""``budget-router engine prepare|command``: the real vLLM engines outside the stack.

``prepare`` does the slow first-use work ahead of time (install the CPU engine, build the tiny model)
and says where everything is, so CI or an image build can pay it once. ``command`` prints the exact
environment and command line each pool's server runs with, to start one by hand, in a unit file or a
container, or to compare with a fleet of one's own.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from extproc.commands.fleet_args import add_fleet_arguments, engine_fleet, fleet_shape
from extproc.engines.cache import cache_root
from extproc.engines.launch import EngineFleet
from extproc.engines.support import cpu_engine_unsupported

ACTIONS = ("prepare", "command")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=ACTIONS,
        help="prepare: install the engine and build the model (if missing) and print where; "
        "command: print each pool's serve command (prepares first if needed)",
    )  # fmt: skip
    add_fleet_arguments(parser, engine_choice=False)
    c = parser.add_argument_group("command")
    c.add_argument("--pool", choices=("short", "long", "both"), default="both", help="which pool's command")
    c.add_argument("--host", default="127.0.0.1", help="address the server listens on")
    c.add_argument("--port", type=int, default=8000, help="port of the short pool's server (long: the next one)")
    c.add_argument("--run-dir", type=Path, default=Path("engine-run"), help="where the server keeps caches and tmp")


def _say(line: str) -> None:
    print(f"budget-router engine: {line}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.port <= 65534:
        raise ValueError(f"--port must be within 1..65534, got {args.port}")
    short, long = fleet_shape(args, "vllm")
    started = time.monotonic()
    fleet = engine_fleet(args, _say)
    if args.action == "prepare":
        print(f"engine cache: {cache_root()}")
        print(f"engine:       {fleet.label}")
        print(f"model:        {fleet.model} (served as {fleet.served_name})")
        print(f"ready in {time.monotonic() - started:.0f} s; `budget-router up --engine vllm` starts the stack on it")
        reason = cpu_engine_unsupported()
        if reason:
            print(f"note: {reason}")
        return 0
    print(commands(fleet, args, short.max_model_len, short.max_num_seqs, long.max_model_len, long.max_num_seqs))
    return 0


def commands(fleet: EngineFleet, args: argparse.Namespace, *shape: int) -> str:
    """Shell lines: the engine's own variables, then the command, per pool asked for."""
    out = []
    for index, pool in enumerate(("short", "long")):
        if args.pool not in (pool, "both"):
            continue
        server = fleet.pool(index, shape[2 * index], shape[2 * index + 1])
        env = server.env(args.run_dir.resolve(), f"pool-{pool}", base={})
        assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
        argv = " ".join(shlex.quote(a) for a in server.argv(args.host, args.port + index))
        out.append(f"# {pool} pool\n{assignments} \\\n  {argv}")
    return "\n".join(out)
