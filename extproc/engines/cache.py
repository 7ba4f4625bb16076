"""Build-once directories: keyed by a hash of their recipe, built in a temporary sibling and renamed
into place under a file lock.

An engine venv takes minutes and gigabytes; two test sessions (or a test session and ``make demo-vllm``)
starting at the same moment must not both install, and an install interrupted half way (Ctrl-C, a full
disk, a killed CI job) must never be mistaken for a finished one. So a directory exists under its final
name only once it is complete (``os.rename`` is atomic on one filesystem), the build runs under an
exclusive ``flock`` that a second builder waits on, and leftovers of a dead build are removed by the
next one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CACHE_ENV = "BUDGET_ROUTER_ENGINE_CACHE"
COMPLETE = ".complete"  # written last inside a build, before the rename: a second guard


def cache_root(env: dict[str, str] | os._Environ[str] | None = None) -> Path:
    """``$BUDGET_ROUTER_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/budget-router/engines``, else
    ``~/.cache/budget-router/engines``."""
    env = os.environ if env is None else env
    if env.get(CACHE_ENV):
        return Path(env[CACHE_ENV]).expanduser()
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "budget-router" / "engines"


def recipe_key(recipe: dict[str, Any]) -> str:
    """A short stable hash of a JSON-able recipe: same inputs, same directory."""
    blob = json.dumps(recipe, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def is_built(path: Path) -> bool:
    return (path / COMPLETE).is_file()


@contextlib.contextmanager
def _locked(lock_path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel if the other builder dies
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(
    root: Path,
    name: str,
    recipe: dict[str, Any],
    build: Callable[[Path], None],
    say: Callable[[str], None],
) -> Path:
    """``root/<name>-<key>``, built by ``build(tmp_dir)`` unless it already exists complete.

    ``build`` fills the empty directory it is given; on success the recipe is stored beside the result
    (for a human asking "what is this directory") and the directory is renamed into place."""
    final = root / f"{name}-{recipe_key(recipe)}"
    if is_built(final):
        return final
    with _locked(root / f".{final.name}.lock", lambda: say(f"waiting for another process building {final}")):
        if is_built(final):  # the other builder finished while we waited
            return final
        for stale in root.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # a build that died; we hold the lock, it is not running
        if final.exists():
            shutil.rmtree(final)  # incomplete (no marker): never trusted
        tmp = root / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            (tmp / "recipe.json").write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
            (tmp / COMPLETE).write_text(f"{time.time():.0f}\n")
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
