"""The fleet-shape and engine flags that ``up`` and ``engine command`` share, and what they resolve to.

One place turns them into the two ``PoolSpec``s and (for ``--engine vllm``) the ``EngineFleet``; the
stack derives the router's contexts, ``B_short`` and capacities from those same specs, so the router
can never be told a fleet other than the one that runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from extproc.engines.launch import DEFAULT_KV_CACHE_GIB, EngineFleet
from extproc.engines.runtime import prepare_fleet
from extproc.engines.settings import CACHE_ENV_DOC, EngineSettings
from extproc.stack.stack import CPU_ENGINE_FLEET, EMULATOR_FLEET, PoolSpec

ENGINES = ("emulator", "vllm")
FLEETS = {"emulator": EMULATOR_FLEET, "vllm": CPU_ENGINE_FLEET}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_fleet_arguments(parser: argparse.ArgumentParser, engine_choice: bool = True) -> None:
    g = parser.add_argument_group("pools and engines")
    if engine_choice:
        g.add_argument(
            "--engine", choices=ENGINES, default="emulator",
            help="what serves the pools: the emulator (a second to start) or real vLLM (the CPU build, installed "
            "into the engine cache on first use; a GPU host's own vLLM where importable or configured)",
        )  # fmt: skip
    em, cpu = EMULATOR_FLEET, CPU_ENGINE_FLEET
    for pool, i in (("short", 0), ("long", 1)):
        g.add_argument(
            f"--{pool}-max-model-len", type=_positive_int, metavar="TOKENS", default=None,
            help=f"{pool} pool's context (default {em[i].max_model_len} emulated, {cpu[i].max_model_len} vLLM)",
        )  # fmt: skip
        g.add_argument(
            f"--{pool}-max-num-seqs", type=_positive_int, metavar="N", default=None,
            help=f"{pool} pool's sequence limit (default {em[i].max_num_seqs} emulated, {cpu[i].max_num_seqs} vLLM)",
        )  # fmt: skip
    g.add_argument(
        "--engine-model", metavar="PATH_OR_NAME", default="",
        help="vLLM: the model to serve (default: the tiny Llama-3 model, built once into the engine cache)",
    )  # fmt: skip
    g.add_argument(
        "--engine-kv-cache-gib", type=float, metavar="GIB", default=DEFAULT_KV_CACHE_GIB,
        help="vLLM CPU: KV cache per server (VLLM_CPU_KVCACHE_SPACE)",
    )  # fmt: skip
    g.add_argument(
        "--engine-flag", action="append", default=[], metavar="FLAG",
        help="extra vLLM server flag for both pools, e.g. --engine-flag=--max-num-batched-tokens=4096 (repeatable)",
    )  # fmt: skip
    g.add_argument(
        "--engine-startup-timeout", type=float, metavar="SECONDS", default=EngineFleet.startup_timeout_s,
        help=f"vLLM: how long a server may take to become healthy. Engine cache: {CACHE_ENV_DOC}",
    )  # fmt: skip


def fleet_shape(args: argparse.Namespace, engine: str) -> tuple[PoolSpec, PoolSpec]:
    """The two pools: the engine's defaults with the flags given applied."""
    defaults = FLEETS[engine]
    short, long = (
        PoolSpec(
            d.name,
            getattr(args, f"{d.name}_max_model_len") or d.max_model_len,
            getattr(args, f"{d.name}_max_num_seqs") or d.max_num_seqs,
        )
        for d in defaults
    )
    if short.max_model_len > long.max_model_len:
        raise ValueError(
            f"--short-max-model-len ({short.max_model_len}) must be <= --long-max-model-len ({long.max_model_len})"
        )
    return short, long


def _say(line: str) -> None:
    print(f"budget-router: {line}", file=sys.stderr, flush=True)


def engine_fleet(args: argparse.Namespace, say: Callable[[str], None] = _say) -> EngineFleet:
    """Install and build what is missing, then the fleet of real engines the flags describe."""
    if not args.engine_kv_cache_gib > 0:
        raise ValueError(f"--engine-kv-cache-gib must be > 0, got {args.engine_kv_cache_gib}")
    if not args.engine_startup_timeout > 0:
        raise ValueError(f"--engine-startup-timeout must be > 0, got {args.engine_startup_timeout}")
    return prepare_fleet(
        EngineSettings.from_env(), say, model=args.engine_model, kv_cache_gib=args.engine_kv_cache_gib,
        extra_flags=tuple(args.engine_flag), startup_timeout_s=args.engine_startup_timeout,
    )  # fmt: skip
