"""The fleet-shape and engine options that ``up`` and ``engine`` share, and what they resolve to.

One place turns them into the two ``PoolSpec``s and (for real vLLM) the request for an
``EngineFleet``; the stack derives the router's contexts, ``B_short`` and capacities from those same
specs, so the router can never be told a fleet other than the one that runs. Resolving the request
(installing the engine, building the model: minutes the first time) is left to the command's ``run``,
never done while options are read.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from extproc.engines.launch import DEFAULT_KV_CACHE_GIB, EngineFleet
from extproc.engines.runtime import prepare_fleet
from extproc.engines.settings import CACHE_ENV_DOC, EngineSettings
from extproc.options import ConfigError, above, at_least, default_of, opt
from extproc.stack.stack import CPU_ENGINE_FLEET, EMULATOR_FLEET, PoolSpec

ENGINES = ("emulator", "vllm")
# The options that only real engines read (the fleet's shape applies to the emulator too).
ENGINE_ONLY = ("engine_model", "engine_kv_cache_gib", "engine_flag", "engine_startup_timeout")
FLEETS = {"emulator": EMULATOR_FLEET, "vllm": CPU_ENGINE_FLEET}
_EM, _CPU = EMULATOR_FLEET, CPU_ENGINE_FLEET


def _pool_default(i: int, what: str) -> str:
    return f"{getattr(_CPU[i], what)} with vLLM, {getattr(_EM[i], what)} emulated"


@dataclass(frozen=True)
class EngineRequest:
    """Real vLLM as the options ask for it, before anything is installed."""

    model: str
    kv_cache_gib: float
    extra_flags: tuple[str, ...]
    startup_timeout_s: float


@dataclass(frozen=True)
class FleetOptions:
    short_max_model_len: int | None = opt(
        None, "Short pool's context.", "TOKENS", check=at_least(1), shown=_pool_default(0, "max_model_len"),
        example=4096,
    )  # fmt: skip
    short_max_num_seqs: int | None = opt(
        None, "Short pool's sequence limit.", "N", check=at_least(1), shown=_pool_default(0, "max_num_seqs")
    )
    long_max_model_len: int | None = opt(
        None, "Long pool's context.", "TOKENS", check=at_least(1), shown=_pool_default(1, "max_model_len"),
        example=131072,
    )  # fmt: skip
    long_max_num_seqs: int | None = opt(
        None, "Long pool's sequence limit.", "N", check=at_least(1), shown=_pool_default(1, "max_num_seqs")
    )
    engine_model: str = opt(
        "", "vLLM: the model to serve.", "PATH_OR_NAME", shown="the tiny Llama-3 model, built into the engine cache",
        example="meta-llama/Llama-3.1-8B-Instruct",
    )  # fmt: skip
    engine_kv_cache_gib: float = opt(
        DEFAULT_KV_CACHE_GIB, "vLLM CPU: KV cache per server (VLLM_CPU_KVCACHE_SPACE).", "GIB", check=above(0)
    )
    engine_flag: tuple[str, ...] = opt(
        (), "Extra vLLM server flag for both pools, e.g. --engine-flag=--max-num-batched-tokens=4096.", "FLAG",
        parse=str, repeat=True, env=False, example="--max-num-batched-tokens=4096",
    )  # fmt: skip
    engine_startup_timeout: float = opt(
        default_of(EngineFleet, "startup_timeout_s"),
        f"vLLM: how long a server may take to become healthy. Engine cache: {CACHE_ENV_DOC}.", "SECONDS",
        check=above(0),
    )  # fmt: skip

    def shape(self, engine: str) -> tuple[PoolSpec, PoolSpec]:
        """The two pools: the engine's defaults with the options given applied."""
        short, long = (
            PoolSpec(
                d.name,
                getattr(self, f"{d.name}_max_model_len") or d.max_model_len,
                getattr(self, f"{d.name}_max_num_seqs") or d.max_num_seqs,
            )
            for d in FLEETS[engine]
        )
        if short.max_model_len > long.max_model_len:
            raise ConfigError(
                f"--short-max-model-len ({short.max_model_len}) must be <= --long-max-model-len ({long.max_model_len})"
            )
        return short, long

    def request(self) -> EngineRequest:
        return EngineRequest(
            self.engine_model, self.engine_kv_cache_gib, self.engine_flag, self.engine_startup_timeout
        )


def _say(line: str) -> None:
    print(f"budget-router: {line}", file=sys.stderr, flush=True)


def engine_fleet(request: EngineRequest, say: Callable[[str], None] = _say) -> EngineFleet:
    """Install and build what is missing, then the fleet of real engines the request describes."""
    return prepare_fleet(
        EngineSettings.from_env(), say, model=request.model, kv_cache_gib=request.kv_cache_gib,
        extra_flags=request.extra_flags, startup_timeout_s=request.startup_timeout_s,
    )  # fmt: skip
