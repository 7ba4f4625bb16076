"""``budget-router emulate``: run one emulated ``vllm serve`` until SIGTERM or SIGINT.

Flags are generated from the ``EmulatorConfig``/``FaultConfig`` fields by ``extproc.options``
(``--max-model-len``, ``--fault-error-rate``, ...), so every setting is reachable and documented in
one place, with its environment variable (``BUDGET_ROUTER_EMULATE_MAX_MODEL_LEN``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from extproc.emulator.engine_args import EmulatorConfig
from extproc.options import Command, ConfigError, command_env_prefix

OPTIONS = Command(EmulatorConfig, command_env_prefix("emulate"))
add_arguments = OPTIONS.add_arguments


def prepare(cfg: EmulatorConfig) -> EmulatorConfig:
    """The options are the emulator's own settings; vLLM's startup checks run here, before binding."""
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


async def serve(cfg: EmulatorConfig) -> None:
    from extproc.emulator.server import start_emulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_emulator(cfg)
    print(f"emulator listening on {running.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await running.close()


def run(args: argparse.Namespace) -> int:
    cfg = prepare(OPTIONS.from_args(args))
    try:
        asyncio.run(serve(cfg))
    except OSError as exc:
        print(f"budget-router emulate: error: cannot listen on {cfg.host}:{cfg.port}: {exc}", file=sys.stderr)
        return 1
    return 0
