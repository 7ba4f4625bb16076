"""A vLLM-compatible server without a GPU: real BPE token counts, vLLM's errors, SSE layout,
scheduler limits and metrics, deterministic text, and fault knobs for hardening tests."""

from extproc.emulator.engine_args import EmulatorConfig, FaultConfig
from extproc.emulator.server import Emulator, RunningEmulator, start_emulator

__all__ = ["Emulator", "EmulatorConfig", "FaultConfig", "RunningEmulator", "start_emulator"]
