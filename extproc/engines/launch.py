"""The exact command and environment that start one pool's vLLM server.

The flags are the ones measured to serve the tiny model on a CPU (``--dtype float32 --enforce-eager``:
eager mode skips a 15-54 s graph compile that buys nothing at this size). The environment pins each
server's OpenMP threads to its own cores (by default both would pin core 0 and halve each other's
speed), sizes the CPU KV cache, keeps the engine offline and keeps every file it writes (compile cache,
temporary files) inside the stack's run directory instead of the user's home and the system temp dir.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from extproc.engines.model import SERVED_NAME

# Variables of the router's own environment that must not leak into the engine's interpreter.
_ROUTER_ONLY = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
DEFAULT_KV_CACHE_GIB = 1.0  # the tiny model holds ~1M tokens of KV in 1 GiB


@dataclass(frozen=True)
class EngineServer:
    """One pool's vLLM server, as the stack launches it."""

    server: tuple[str, ...]  # argv prefix that takes vLLM's server flags
    model: str
    served_name: str
    max_model_len: int
    max_num_seqs: int
    cpus: str = ""  # VLLM_CPU_OMP_THREADS_BIND, e.g. "0" or "0-3"; "" leaves vLLM's default
    kv_cache_gib: float = DEFAULT_KV_CACHE_GIB
    offline: bool = True  # the tiny model is local; a hub model name on a GPU host may need the network
    extra_flags: tuple[str, ...] = field(default_factory=tuple)

    def argv(self, host: str, port: int) -> list[str]:
        return [
            *self.server,
            "--model", self.model,
            "--served-model-name", self.served_name,
            "--host", host, "--port", str(port),
            "--max-model-len", str(self.max_model_len),
            "--max-num-seqs", str(self.max_num_seqs),
            "--dtype", "float32",
            "--enforce-eager",
            *self.extra_flags,
        ]  # fmt: skip

    @staticmethod
    def dirs(run_dir: Path, name: str) -> tuple[Path, Path]:
        """(temporary files, vLLM's cache root) of server ``name``: inside the run dir, so a run leaves
        nothing in the system temp dir or the user's home, and its post-mortem has everything."""
        return run_dir / f"{name}-tmp", run_dir / f"{name}-vllm-cache"

    def env(self, run_dir: Path, name: str, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) without the router's Python settings, plus
        the engine's own. The directories of ``dirs`` must exist before the server starts."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _ROUTER_ONLY}
        tmp, cache = self.dirs(run_dir, name)
        env.update(
            VLLM_TARGET_DEVICE="cpu",
            VLLM_CPU_KVCACHE_SPACE=f"{self.kv_cache_gib:g}",
            VLLM_CACHE_ROOT=str(cache),
            TMPDIR=str(tmp),
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
            PYTHONUNBUFFERED="1",
        )
        if self.cpus:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus
        if self.offline:
            env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        return env


def split_cpus(cpus: Sequence[int] | None = None, parts: int = 2) -> list[str]:
    """This process's CPUs in ``parts`` disjoint groups, one per server ("0", "1" on two cores;
    "0-3", "4-7" on eight). With fewer CPUs than servers they share round-robin."""
    have = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if not have:
        return [""] * parts
    if len(have) < parts:
        return [str(have[i % len(have)]) for i in range(parts)]
    size = len(have) // parts
    groups = [have[i * size : (i + 1) * size] for i in range(parts)]
    groups[-1] += have[parts * size :]
    return [_cpu_list(g) for g in groups]


def _cpu_list(cpus: Sequence[int]) -> str:
    """Compact "0-3,6" form (what VLLM_CPU_OMP_THREADS_BIND takes)."""
    runs: list[str] = []
    start = prev = cpus[0]
    for c in [*cpus[1:], None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(runs)


@dataclass(frozen=True)
class EngineFleet:
    """Real vLLM for both pools of a stack: one runtime and model, each pool its own server (its own
    context, sequence limit and cores)."""

    server: tuple[str, ...]
    model: str
    label: str = ""  # what runs them, for the banner
    served_name: str = SERVED_NAME
    kv_cache_gib: float = DEFAULT_KV_CACHE_GIB
    cpus: tuple[str, ...] = field(default_factory=lambda: tuple(split_cpus()))
    offline: bool = True
    extra_flags: tuple[str, ...] = ()
    # A first start imports torch and vLLM in three processes: 31-44 s warm, 80-190 s seen on a busy
    # 2-core machine. Generous, but bounded, and the wait prints progress.
    startup_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if not self.server:
            raise ValueError("the engine server command is empty")
        if not self.kv_cache_gib > 0:
            raise ValueError(f"the KV cache size must be > 0 GiB, got {self.kv_cache_gib}")
        if not self.startup_timeout_s > 0:
            raise ValueError(f"the engine startup timeout must be > 0 s, got {self.startup_timeout_s}")

    def pool(self, index: int, max_model_len: int, max_num_seqs: int) -> EngineServer:
        """Pool ``index`` (0 short, 1 long)'s server."""
        return EngineServer(
            server=self.server,
            model=self.model,
            served_name=self.served_name,
            max_model_len=max_model_len,
            max_num_seqs=max_num_seqs,
            cpus=self.cpus[index % len(self.cpus)] if self.cpus else "",
            kv_cache_gib=self.kv_cache_gib,
            offline=self.offline,
            extra_flags=self.extra_flags,
        )
