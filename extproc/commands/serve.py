"""``budget-router serve``: run the ext_proc server (optionally N worker processes on one port).

Lifecycle: load calibration state -> serve -> on SIGTERM/SIGINT go NOT_SERVING, drain streams
within the grace period, save state, exit 0. Workers are separate processes sharing the port with
SO_REUSEPORT (no shared lock on the hot path); they exchange calibration through the state file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import multiprocessing
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from extproc.algorithm.pressure import LivePressure
from extproc.config import Config, ConfigError, add_config_flags, config_from_args
from extproc.server.exchange import RouterRuntime
from extproc.server.pool_load import build_scraper
from extproc.server.service import RouterServer
from extproc.server.state_store import StateStore, periodic_sync

log = logging.getLogger("budget_router")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser)


async def serve(
    cfg: Config, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None, worker: int = 0
) -> int:
    """Run until ``stop`` is set or a termination signal arrives."""
    from extproc.telemetry import TelemetryObserver, build_observer

    observer, telemetry_shutdown = build_observer(cfg, worker=worker)
    rt = RouterRuntime.from_config(cfg, observer)
    store = StateStore(cfg.calibration.state_file, live_window_s=3 * cfg.calibration.save_interval_s)
    if isinstance(observer, TelemetryObserver):
        observer.attach(rt, store)  # gauges read the calibrator, in-flight counts and the state file's tallies
    peers = store.load_into(rt.router.calibrator, rt.router.linear)
    freeze_startup_objects()
    server = RouterServer(rt)
    await server.start()
    pressure = rt.router.pressure
    scraper = build_scraper(pressure, cfg.live_load) if isinstance(pressure, LivePressure) else None
    if scraper is not None:
        await scraper.start()
        rt.scraper = scraper  # telemetry reads its counters
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # before the ready line: a supervisor may signal at once
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    host = cfg.server.listen.rsplit(":", 1)[0]
    print(f"budget-router listening on {host}:{server.port} (state peers loaded: {peers})", flush=True)
    if ready is not None:
        ready.set()

    syncer = asyncio.create_task(
        periodic_sync(store, rt.router.calibrator, cfg.calibration.save_interval_s, stop, rt.router.linear)
    )
    await stop.wait()
    log.info("shutting down: NOT_SERVING, draining %d streams", server.processor.active)
    await syncer
    await server.stop(cfg.server.grace_period_s)
    if scraper is not None:
        await scraper.stop()
    await store.sync_async(rt.router.calibrator, rt.router.linear)
    if telemetry_shutdown is not None:
        telemetry_shutdown()
    return 0


def freeze_startup_objects() -> None:
    """Move everything built so far (modules, config, tables, the loaded state) out of the garbage
    collector's reach. A full collection walks every tracked object with the event loop stopped:
    ~50,000 of them after startup, 20-100 ms per collection on a busy 2-core machine, one every few
    hundred exchanges: a P99 of +80 ms and ~10 % of the router's CPU (benchmarks/sidebyside.py).
    Per-exchange garbage is collected as before."""
    gc.collect()
    gc.freeze()


def run_loop(cfg: Config, main: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when available: it cuts the router's CPU per exchange by ~15 % (grpc.aio's
    callbacks run on the loop), measured with benchmarks/router_cpu.py."""
    factory = None
    if cfg.server.event_loop != "asyncio":
        try:
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            if cfg.server.event_loop == "uvloop":
                main.close()
                raise ConfigError("server.event_loop is uvloop but uvloop is not installed") from None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _worker(cfg: Config, index: int) -> None:
    logging.basicConfig(level=cfg.telemetry.log_level.upper(), stream=sys.stderr)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; SIGTERM drains
    sys.exit(run_loop(cfg, serve(cfg, worker=index)))


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    logging.basicConfig(level=cfg.telemetry.log_level.upper(), stream=sys.stderr)
    if cfg.server.workers == 1:
        return run_loop(cfg, serve(cfg))
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(cfg, i), name=f"router-{i}") for i in range(cfg.server.workers)]
    for p in procs:
        p.start()

    def forward(signum, _frame) -> None:
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.terminate()  # SIGTERM: each worker drains on its own

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for p in procs:
        p.join()
    return max((p.exitcode or 0) for p in procs)
