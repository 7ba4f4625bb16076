"""1,000 concurrent streaming requests through the real Envoy: every one completes, the router's memory
stays bounded and it leaks no file descriptors.

Both pools hold every request for ``HOLD_MS`` before generating (the emulator's ``extra_latency_ms``
fault), so all 1,000 streams are open at the same time: 1,000 client connections, 1,000 upstream
connections and 1,000 concurrent ext_proc gRPC streams on the router (calibration is cold, so the
router follows every response). Memory and descriptors are read from ``/proc`` of the router process.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import orjson
import pytest

from extproc.stack.probes import free_port, http_get
from extproc.stack.stack import Stack
from tests.conftest import start_stack
from tests.e2e.client import Reply, body_for, post, sse_payloads
from tests.waiting import until

# perf: memory and wall-clock bounds (generous; run by make test, deselect with -m "not perf").
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.perf]

CONCURRENT = 1_000
HOLD_MS = 2_000.0
MIB = 1024 * 1024
# The router idles at ~50 MiB (Python, grpcio, protobuf, orjson, the BPE-free estimator). 1,000 open
# exchanges cost a few KiB each (an Exchange, an SSE scanner, grpc.aio call state); the bound leaves
# room for allocator slack but would catch a per-request leak of bodies (4 KiB x 1,000 = 4 MiB per round).
RSS_GROWTH_BOUND = 64 * MIB  # measured: ~28 MiB for 1,000 open streams
RSS_BOUND = 160 * MIB  # measured: ~80 MiB peak
# Envoy's count of exchanges it let through without the router's answer (a timeout or a broken stream).
FAILED_OPEN_STAT = r"http\..*\.ext_proc\.failure_mode_allowed"
FD_SLACK = 2  # e.g. a metrics scrape connection still closing


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextmanager
def peak_rss(pid: int, interval_s: float = 0.05) -> Iterator[list[int]]:
    """Samples the RSS of ``pid`` in a thread while the block runs; yields [peak] (filled on exit)."""
    peak = [rss_bytes(pid)]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval_s):
            try:
                peak[0] = max(peak[0], rss_bytes(pid))
            except (OSError, RuntimeError):
                return

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield peak
    finally:
        stop.set()
        thread.join()


def prometheus_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def envoy_counter(stack: Stack, stat: str) -> int:
    status, body = http_get(f"{stack.admin_url}/stats?filter=^{stat}$", timeout_s=2.0)
    assert status == 200, body
    values = [int(line.split(":")[1]) for line in body.decode().splitlines() if ":" in line]
    return sum(values)


async def set_faults(session: aiohttp.ClientSession, stack: Stack, **faults: object) -> None:
    for pool in ("short", "long"):
        async with session.post(stack.pool_url(pool) + "/admin/faults", data=orjson.dumps(faults)) as resp:
            assert resp.status == 200, await resp.text()


async def fire(stack: Stack, bodies: list[bytes], timeout_s: float = 60.0) -> list[Reply | BaseException]:
    """All bodies at once, one connection each (no client-side pooling limit)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:
        return await asyncio.gather(
            *(post(session, stack.url, body, timeout_s=timeout_s) for body in bodies), return_exceptions=True
        )


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def load_stack(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[Stack]:
    flags = ("--telemetry-metrics-port", str(metrics_port), "--spillover-enabled", "false")
    with start_stack(tmp_path_factory, "load", router_flags=flags) as stack:
        yield stack


def _stream_bodies(n: int) -> list[bytes]:
    # A third ask for usage themselves; the others get include_usage injected (and stripped again).
    return [
        orjson.dumps(body_for("prose", 150 + i % 50, max_tokens=12, seed=i, stream=True, include_usage=i % 3 == 0))
        for i in range(n)
    ]


def in_flight_drains(metrics_port: int) -> float:
    """Until the router counts no exchange in flight (each ends just after its client's response)."""

    def in_flight() -> float:
        status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200, status
        return prometheus_value(text.decode(), "budget_router_in_flight")

    return until(in_flight, "no exchange in flight on the router", lambda n: n == 0)


async def test_thousand_concurrent_streams_complete_with_bounded_router(load_stack: Stack, metrics_port: int) -> None:
    stack = load_stack
    pid = stack.routers[0].pid
    assert pid is not None
    bodies = _stream_bodies(CONCURRENT)
    # Warm up (imports, first allocations, the gRPC connection from Envoy) before the baseline.
    warm = await fire(stack, bodies[:50])
    assert all(isinstance(r, Reply) and r.status == 200 for r in warm), warm[:3]
    await asyncio.to_thread(in_flight_drains, metrics_port)
    fds_before, rss_before = open_fds(pid), rss_bytes(pid)
    overflow_stats = [
        f"cluster.{c}.{s}"
        for c in ("budget_router", "pool_short", "pool_long")
        for s in ("upstream_rq_pending_overflow", "upstream_cx_overflow", "upstream_rq_retry_overflow")
    ]
    overflow_before = {s: envoy_counter(stack, s) for s in overflow_stats}
    failed_open_before = envoy_counter(stack, FAILED_OPEN_STAT)

    async with aiohttp.ClientSession() as admin:
        await set_faults(admin, stack, extra_latency_ms=HOLD_MS)
        try:
            started = time.monotonic()
            with peak_rss(pid) as peak:
                replies = await fire(stack, bodies)
            elapsed = time.monotonic() - started
        finally:
            await set_faults(admin, stack, extra_latency_ms=0.0)

    failures = [r for r in replies if not isinstance(r, Reply) or r.status != 200]
    assert not failures, f"{len(failures)} of {CONCURRENT} failed, e.g. {failures[:3]}"
    for reply in replies:
        assert isinstance(reply, Reply)
        assert sse_payloads(reply.body)[-1] == b"[DONE]", reply.body[-200:]
    # Every stream was held HOLD_MS upstream, so they overlapped: the whole batch took about one hold.
    assert elapsed < 4 * HOLD_MS / 1000, f"1,000 held streams took {elapsed:.1f}s: they did not run concurrently"
    # Every request fits the short pool and spillover is off: one routed long can only be a fail-open (the
    # router did not answer within Envoy's message_timeout while 1,000 exchanges queued on a loaded machine),
    # which costs capacity, not the request. Anything routed long beyond those is a routing bug.
    routed = [stack.access_log.pool(r.request_id) for r in replies if isinstance(r, Reply)]
    failed_open = envoy_counter(stack, FAILED_OPEN_STAT) - failed_open_before
    print(f"routed long by fail-open: {routed.count('long')} ({failed_open} ext_proc failure_mode_allowed)")
    assert routed.count("long") <= failed_open, (routed.count("long"), failed_open)

    # Envoy's circuit breakers (max_concurrent_requests) never tripped on the router or the pools.
    assert {s: envoy_counter(stack, s) for s in overflow_stats} == overflow_before

    # The router saw every exchange end: nothing is counted in flight any more.
    await asyncio.to_thread(in_flight_drains, metrics_port)

    growth = peak[0] - rss_before
    print(f"router RSS: {rss_before / MIB:.1f} MiB before, peak {peak[0] / MIB:.1f} MiB with {CONCURRENT} streams")
    assert peak[0] < RSS_BOUND and growth < RSS_GROWTH_BOUND, (rss_before, peak[0])

    # Descriptors: Envoy keeps one HTTP/2 connection to the router; nothing per request survives.
    fds_after = await asyncio.to_thread(
        until, lambda: open_fds(pid), "the router's descriptors back to the baseline",
        lambda n: n <= fds_before + FD_SLACK,
    )  # fmt: skip
    print(f"router fds: {fds_before} before, {fds_after} after")


async def test_repeated_load_does_not_grow_the_router(load_stack: Stack) -> None:
    """Three more rounds of 300 concurrent streams: RSS after each round stays flat (no per-request leak)."""
    stack = load_stack
    pid = stack.routers[0].pid
    assert pid is not None
    bodies = _stream_bodies(300)
    after_rounds = []
    for _ in range(3):
        replies = await fire(stack, bodies)
        assert all(isinstance(r, Reply) and r.status == 200 for r in replies)
        after_rounds.append(rss_bytes(pid))
    print(f"router RSS after rounds: {[f'{r / MIB:.1f}' for r in after_rounds]} MiB")
    # 900 exchanges between the first and last sample; a leak of 8 KiB each would show as 7 MiB
    # (measured: < 2 MiB of allocator settling).
    assert after_rounds[-1] - after_rounds[0] < 6 * MIB, after_rounds
