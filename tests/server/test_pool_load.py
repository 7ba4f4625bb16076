"""The live-load scraper against real HTTP servers on 127.0.0.1: the emulator's vLLM /metrics, an
endpoint that hangs, one that serves garbage; and discovery of pool members from an admin document."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.pressure import LIVE, LivePressure
from extproc.emulator import EmulatorConfig, RunningEmulator, start_emulator
from extproc.server.pool_load import TIMEOUT, UNREADABLE, PoolLoadScraper, cluster_hosts
from extproc.server.vllm_metrics import parse_engine_load
from tests.waiting import until_async

INTERVAL, TIMEOUT_S = 0.05, 0.2


async def serve(handler: Callable[[web.Request], object]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"127.0.0.1:{port}"


@pytest.fixture
async def busy_engine() -> AsyncIterator[RunningEmulator]:
    """An emulated vLLM with 2 slots holding 5 slow requests: 2 running, 3 waiting."""
    emu = await start_emulator(EmulatorConfig(port=0, latency_scale=50.0, max_num_seqs=2, max_model_len=4096))
    for _ in range(5):
        emu.emulator.engine.submit(100, 1000, "length")
    yield emu
    await emu.close()


@pytest.fixture
async def broken() -> AsyncIterator[dict[str, str]]:
    async def hang(_: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        return web.Response()

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(body=b"\x00\xff<html>vllm:num_requests_running{oops 12\n" * 50)

    runners = {}
    out = {}
    for name, handler in (("hang", hang), ("garbage", garbage)):
        runners[name], out[name] = await serve(handler)
    yield out
    for runner in runners.values():
        await runner.cleanup()


async def until(predicate: Callable[[], bool], what: str = "the scraper's state") -> None:
    await until_async(predicate, what)


async def _scrape_good_and_broken(busy_engine: RunningEmulator, broken: dict[str, str]) -> list[float]:
    """One good engine, then the same beside a hanging and a garbage endpoint; returns the event
    loop's lags (how late a 5 ms timer fired) while they were scraped."""
    good = f"127.0.0.1:{busy_engine.port}"
    clean = LivePressure({SHORT: 2, LONG: 8}, max_age_s=0.5)
    mixed = LivePressure({SHORT: 2 * 3, LONG: 8}, max_age_s=0.5)  # three endpoints of 2 slots each
    scrapers = [
        PoolLoadScraper(clean, {SHORT: [good]}, INTERVAL, TIMEOUT_S),
        PoolLoadScraper(mixed, {SHORT: [good, broken["hang"], broken["garbage"]]}, INTERVAL, TIMEOUT_S),
    ]
    lags: list[float] = []

    async def ticker() -> None:  # the scrapes must never hold up the router's event loop
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.005)
            lags.append(time.perf_counter() - t - 0.005)

    tick = asyncio.create_task(ticker())
    for s in scrapers:
        await s.start()
    try:
        await until(lambda: all(SHORT in p.samples for p in (clean, mixed)))
        await until(lambda: scrapers[1].stats.failures[(SHORT, TIMEOUT)] >= 2)
        assert clean.pressure(SHORT) == pytest.approx(5 / 2)  # 2 running + 3 waiting on 2 slots
        assert mixed.pressure(SHORT) == pytest.approx(clean.pressure(SHORT))
        assert clean.source[SHORT] == mixed.source[SHORT] == LIVE
        assert scrapers[1].stats.failures[(SHORT, UNREADABLE)] >= 2
        assert not scrapers[0].stats.failures
        assert scrapers[0].stats.load[SHORT].running == 2 and scrapers[0].stats.load[SHORT].waiting == 3
    finally:
        for s in scrapers:
            await s.stop()
        tick.cancel()
    return lags


async def test_broken_endpoints_change_nothing_but_a_counter(
    busy_engine: RunningEmulator, broken: dict[str, str]
) -> None:
    await _scrape_good_and_broken(busy_engine, broken)


@pytest.mark.perf
async def test_hanging_and_garbage_endpoints_never_hold_up_the_event_loop(
    busy_engine: RunningEmulator, broken: dict[str, str]
) -> None:
    lags = await _scrape_good_and_broken(busy_engine, broken)
    # A scrape that blocked would hold the loop for its whole timeout; scheduling noise on a loaded
    # 2-core machine stays far below this bound.
    assert max(lags) < 0.5, f"event loop held up for {max(lags) * 1000:.0f} ms"


async def test_all_endpoints_failing_falls_back_to_the_local_count(broken: dict[str, str]) -> None:
    live = LivePressure({SHORT: 4, LONG: 8}, max_age_s=0.15)
    scraper = PoolLoadScraper(live, {SHORT: [broken["garbage"]]}, INTERVAL, TIMEOUT_S)
    await scraper.start()
    try:
        await until(lambda: scraper.stats.failures[(SHORT, UNREADABLE)] >= 3)
        live.acquire(SHORT)
        assert live.pressure(SHORT) == pytest.approx(1 / 4)
        assert live.fallbacks[SHORT] >= 1
    finally:
        await scraper.stop()


def envoy_clusters(hosts: dict[str, list[int]]) -> bytes:
    """The shape of Envoy's admin ``/clusters?format=json`` (as the e2e test reads from the real one)."""
    return orjson.dumps(
        {
            "cluster_statuses": [
                {
                    "name": name,
                    "host_statuses": [
                        {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}} for p in ports
                    ],
                }
                for name, ports in hosts.items()
            ]
        }
    )


async def test_discovery_follows_membership_without_restart(busy_engine: RunningEmulator) -> None:
    members: dict[str, list[int]] = {"pool_short": [], "pool_long": [], "other": [1]}

    reads = [0]

    async def clusters(_: web.Request) -> web.Response:
        reads[0] += 1
        return web.Response(body=envoy_clusters(members), content_type="application/json")

    runner, admin = await serve(clusters)
    live = LivePressure({SHORT: 2, LONG: 8}, max_age_s=0.5)
    scraper = PoolLoadScraper(
        live, {}, INTERVAL, TIMEOUT_S, envoy_admin=admin,
        clusters={SHORT: "pool_short", LONG: "pool_long"}, discovery_interval_s=0.05,
    )  # fmt: skip
    await scraper.start()
    try:
        await until(lambda: reads[0] >= 3, "three reads of the (empty) cluster list")
        assert not scraper.endpoints and SHORT not in live.samples
        members["pool_short"] = [busy_engine.port]
        await until(lambda: SHORT in live.samples)
        assert live.pressure(SHORT) == pytest.approx(5 / 2)
        assert [url for (pool, url) in scraper.endpoints] == [f"http://127.0.0.1:{busy_engine.port}/metrics"]
        members["pool_short"] = []
        await until(lambda: not scraper.endpoints)
    finally:
        await scraper.stop()
        await runner.cleanup()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.sampled_from(["pool_short", "address"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["cluster_statuses", "name", "host_statuses", "address", "socket_address", "port_value"]),
        inner, max_size=4,
    ),
    max_leaves=20,
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_cluster_hosts_never_raises_on_odd_admin_documents(doc: object) -> None:
    for addr, port in cluster_hosts(doc, "pool_short"):
        assert isinstance(addr, str) and isinstance(port, int)


def test_cluster_hosts_reads_only_the_named_cluster_and_tolerates_odd_documents() -> None:
    doc = orjson.loads(envoy_clusters({"pool_short": [1, 2], "pool_long": [3]}))
    assert cluster_hosts(doc, "pool_short") == [("127.0.0.1", 1), ("127.0.0.1", 2)]
    odd_hosts = {"cluster_statuses": [{"name": "pool_short", "host_statuses": [7]}]}
    for odd in (None, [], {"cluster_statuses": 3}, odd_hosts):
        assert cluster_hosts(odd, "pool_short") == []


async def test_emulator_page_has_vllms_names_types_and_semantics(busy_engine: RunningEmulator) -> None:
    """What the router parses in every e2e test is what vLLM serves: gauges for the queues and the
    KV-cache fraction (0..1), a counter for preemptions, engine and model_name labels."""
    async with aiohttp.ClientSession() as session, session.get(f"{busy_engine.url}/metrics") as resp:
        page = await resp.read()
    for name, kind in (
        ("vllm:num_requests_running", "gauge"),
        ("vllm:num_requests_waiting", "gauge"),
        ("vllm:kv_cache_usage_perc", "gauge"),
        ("vllm:num_preemptions_total", "counter"),
    ):
        assert f"# TYPE {name} {kind}\n".encode() in page
        assert f'{name}{{engine="0",model_name="'.encode() in page
    load = parse_engine_load(page)
    assert load is not None and (load.running, load.waiting) == (2, 3)
    engine = busy_engine.emulator.engine
    assert load.kv_usage == pytest.approx(engine.used_blocks / engine.capacity_blocks) and 0 < load.kv_usage < 1
