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
import socket
import sys
from collections.abc import Coroutine
from typing import Any

from extproc.algorithm.pressure import LivePressure
from extproc.config import Config, ConfigError, add_config_flags, config_from_args
from extproc.server.engine_count import EngineCounter
from extproc.server.exchange import RouterRuntime
from extproc.server.pool_load import build_scraper
from extproc.server.service import RouterServer
from extproc.server.state_store import StateStore, instance_id, periodic_sync

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
    try:
        server = RouterServer(rt)  # binds: the port is part of this instance's identity in the state file
    except (OSError, RuntimeError) as exc:  # grpc's "Failed to bind" is a RuntimeError
        if telemetry_shutdown is not None:
            telemetry_shutdown()
        reason = f"cannot listen on {cfg.server.listen}: in use by another process, or not an address of this host"
        raise ConfigError(f"server.listen: {reason} ({str(exc).split(';')[0]})") from None
    c = cfg.calibration
    rid = instance_id(c.instance_id, cfg.server.listen, server.port, worker, cfg.server.workers)
    store = StateStore(c.state_file, rid, live_window_s=3 * c.save_interval_s)
    if isinstance(observer, TelemetryObserver):
        observer.attach(rt, store)  # gauges read the calibrator, in-flight counts and the state file's tallies
    peers = store.load_into(rt.router.calibrator, rt.router.linear)
    freeze_startup_objects()
    await server.start()
    pressure = rt.router.pressure
    scraper = build_scraper(pressure, cfg.live_load) if isinstance(pressure, LivePressure) else None
    if scraper is not None:
        await scraper.start()
        rt.scraper = scraper  # telemetry reads its counters
    counter = None
    if cfg.estimator.engine_counts and scraper is not None:  # validated: engine counts need live_load
        e = cfg.estimator
        counter = EngineCounter(scraper.live_engines, e.engine_count_timeout_s, e.engine_count_max_in_flight)
        await counter.start()
        rt.counter = counter
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
    if counter is not None:
        await counter.stop()
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


def refuse_a_held_port(listen: str) -> None:
    """Workers share their port with SO_REUSEPORT, which would just as well let them join another
    router already on it (two routers with different settings splitting one port's traffic). A
    socket without SO_REUSEPORT cannot bind a port anyone listens on: bound once here, before the
    workers exist, it tells. A single router binds without SO_REUSEPORT and finds out by itself."""
    if listen.startswith("unix:"):
        return
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"server.listen: cannot resolve {listen!r}: {exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"server.listen: {listen} is held by another process (another router?): {exc.strerror}"
            ) from None


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    logging.basicConfig(level=cfg.telemetry.log_level.upper(), stream=sys.stderr)
    if cfg.server.workers == 1:
        return run_loop(cfg, serve(cfg))
    refuse_a_held_port(cfg.server.listen)
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
