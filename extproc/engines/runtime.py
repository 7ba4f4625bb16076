"""Which vLLM runs the pools: a configured command, this interpreter's own ``vllm``, or the managed CPU
engine; and which model it serves.

On a GPU host the user has vLLM already (``pip install vllm`` next to the router, or in an image):
``--engine vllm`` then runs that, unchanged, and the managed CPU venv is never installed. Elsewhere the
CPU build is installed into the cache on first use. The order is explicit so that a machine with both
never surprises: a configured command wins, then an importable ``vllm``, then the managed one.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extproc.engines.install import ensure_engine
from extproc.engines.launch import EngineFleet
from extproc.engines.model import Builder, ModelSpec, ensure_model
from extproc.engines.settings import COMMAND_ENV, SERVER_MODULE, EngineSettings


@dataclass(frozen=True)
class Runtime:
    """How to start a vLLM OpenAI server (``server`` + its flags), and what can build the tiny model
    (None for a configured command: it must be given a model)."""

    label: str
    server: tuple[str, ...]
    builder: Builder | None


def vllm_importable() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_runtime(settings: EngineSettings, say: Callable[[str], None]) -> Runtime:
    """The runtime to use; installs the managed engine when it is the one and not in the cache yet."""
    if settings.command:
        return Runtime(f"{COMMAND_ENV}: {' '.join(settings.command)}", settings.command, None)
    if vllm_importable():
        python = Path(sys.executable)
        return Runtime(f"vllm importable in {python}", (str(python), "-m", SERVER_MODULE), Builder(python, str(python)))
    engine = ensure_engine(settings, say)
    return Runtime(
        f"{settings.package} (managed venv {engine.root})",
        (str(engine.python), "-m", SERVER_MODULE),
        Builder(engine.python, f"managed:{engine.key}"),
    )


def resolve_model(settings: EngineSettings, runtime: Runtime, say: Callable[[str], None], given: str = "") -> str:
    """``given`` (a path or a model name the runtime can load) when set, else the tiny model, built
    into the cache first when needed."""
    if given:
        return given
    if runtime.builder is None:
        raise ValueError(f"{COMMAND_ENV} is set, so there is no engine python to build the tiny model with: "
                         "give the model to serve (--engine-model PATH_OR_NAME)")  # fmt: skip
    return str(ensure_model(settings.cache_dir, runtime.builder, say, ModelSpec()))


def prepare_fleet(
    settings: EngineSettings, say: Callable[[str], None], model: str = "", **fleet: Any
) -> EngineFleet:
    """Install what is missing (engine, tiny model) and describe the fleet the stack will start."""
    runtime = resolve_runtime(settings, say)
    served = resolve_model(settings, runtime, say, given=model)
    return EngineFleet(runtime.server, served, label=runtime.label, offline=not model, **fleet)
