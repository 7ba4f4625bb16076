"""Faults around the router, all through the real Envoy: the router killed or terminated, a pool
down or slow, and a backend that lies about token usage.

What the shipped config promises (fail-open, default route long) and what these tests hold it to:
* router SIGKILLed under load: no request fails (Envoy fails open to the long pool); a restarted
  router starts from the calibration it saved;
* fail-closed (``failure_mode_allow: false``): a clear 5xx at once, never a hang;
* SIGTERM: gRPC health NOT_SERVING, in-flight streams finish, exit 0 within the grace period;
* a pool down: the other pool is unaffected; requests routed to the dead pool get Envoy's 503
  quickly (the router does not watch pool health: see docs/hardening.md);
* the short pool slow: once its in-flight count reaches ``spillover.short_capacity`` short requests
  spill to the long pool; long requests never go short;
* usage lies (0, 10^9, random): the learned ratio stays within bounds and routing stays safe.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc.envoy_names import LONG_CLUSTER, SHORT_CLUSTER
from extproc.gateway.envoy_config import SERVED_POOL_HEADER, SHORT_FAILOVER_CLUSTER
from extproc.stack.probes import EXT_PROC_SERVICE, envoy_host_healthy, free_port, http_get
from extproc.stack.stack import Stack, wait_for
from tests.conftest import start_stack
from tests.e2e.client import Reply, body_for, calibration, post, sse_payloads, wait_samples
from tests.hardening.test_load import fire, prometheus_value, set_faults
from tests.waiting import until_async

pytestmark = pytest.mark.e2e

SHORT_PROMPT, LONG_PROMPT = 400, 12_000  # tokens; the long one exceeds the short pool's 8,192 window


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def saved_at(stack: Stack) -> float:
    """When the freshest replica snapshot in the state file was written (0 before the first save)."""
    try:
        replicas = orjson.loads(stack.state_file.read_bytes()).get("replicas", {})
    except (FileNotFoundError, orjson.JSONDecodeError):
        return 0.0
    return max((float(e.get("updated", 0.0)) for e in replicas.values()), default=0.0)


def replica_entry(stack: Stack, saved_after: float = 0.0) -> dict:
    """The state-file snapshot the router wrote under its instance id (``<hostname>:<port>``, the same
    across restarts) at or after ``saved_after`` (unix time); {} until then."""
    try:
        replicas = orjson.loads(stack.state_file.read_bytes()).get("replicas", {})
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    entry = replicas.get(f"{socket.gethostname()}:{stack.router_ports[0]}", {})
    return entry.get("categories", {}) if entry.get("updated", 0.0) >= saved_after else {}


def health_status(address: str) -> int | None:
    """The router's gRPC health for the ext_proc service; None when nothing answers."""
    try:
        with grpc.insecure_channel(address) as channel:
            resp = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=EXT_PROC_SERVICE), timeout=1.0
            )
    except grpc.RpcError:
        return None
    return resp.status


async def steady_load(stack: Stack, duration_s: float, concurrency: int = 16) -> list[tuple[str, Reply]]:
    """``concurrency`` clients in a loop for ``duration_s``: short and long, streaming and not.
    Returns (expected pool, reply) per request; exceptions propagate (a hang or reset is a failure)."""
    out: list[tuple[str, Reply]] = []
    deadline = time.monotonic() + duration_s

    async def client(n: int, session: aiohttp.ClientSession) -> None:
        i = 0
        while time.monotonic() < deadline:
            long = (n + i) % 4 == 0
            body = body_for("code", LONG_PROMPT if long else SHORT_PROMPT, max_tokens=24, seed=n * 1000 + i,
                            stream=i % 2 == 0)  # fmt: skip
            out.append(("long" if long else "short", await post(session, stack.url, body, timeout_s=30)))
            i += 1

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(n, session) for n in range(concurrency)))
    return out


def assert_all_ok(results: list[tuple[str, Reply]]) -> None:
    bad = [(r.status, r.body[:200]) for _, r in results if r.status != 200]
    assert not bad, f"{len(bad)} of {len(results)} failed: {bad[:3]}"
    for _, reply in results:
        if reply.headers.get("content-type", "").startswith("text/event-stream"):
            assert sse_payloads(reply.body)[-1] == b"[DONE]", reply.body[-200:]


# -- router SIGKILL -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_router_sigkill_under_load_fails_open_then_restarts_warm(
    tmp_path_factory: pytest.TempPathFactory, session: aiohttp.ClientSession
) -> None:
    # latency_scale 0.3: a 24-token stream lasts ~60 ms, so requests are in flight at the kill.
    with start_stack(tmp_path_factory, "sigkill", latency_scale=0.3) as stack:
        warm = [await post(session, stack.url, body_for("code", SHORT_PROMPT, max_tokens=8, seed=s)) for s in range(12)]
        assert all(r.status == 200 for r in warm)
        learned = wait_samples(stack, "code", 12)
        old_pid = stack.routers[0].pid
        assert old_pid is not None

        load = asyncio.create_task(steady_load(stack, duration_s=3.0))
        await asyncio.sleep(1.0)
        await asyncio.to_thread(stack.kill_router)
        killed_at = time.monotonic()
        results = await load
        assert time.monotonic() - killed_at > 1.5  # traffic kept flowing for a while with no router
        assert_all_ok(results)
        # Fail-open sends everything to the default route: a request that does not fit the short pool
        # never went there, with or without the router.
        for expected, reply in results:
            if expected == "long":
                assert stack.access_log.pool(reply.request_id) == "long"

        restarted_at = time.time()
        await asyncio.to_thread(stack.restart_router)
        new_pid = stack.routers[0].pid
        assert new_pid != old_pid
        # Warm start: the new process's first save (same instance id, its own entry) already holds
        # what the killed one had saved, before it has seen a single response.
        await asyncio.to_thread(
            wait_for, lambda: replica_entry(stack, restarted_at).get("code", {}).get("samples", 0) >= learned, 10.0,
            "the restarted router to save the calibration it loaded",
        )  # fmt: skip
        assert "state peers loaded: 1" in stack.routers[0].log_tail(200)
        reply = await post(session, stack.url, body_for("code", SHORT_PROMPT, max_tokens=8, seed=999))
        assert reply.status == 200
        assert stack.access_log.pool(reply.request_id) == "short"  # routing again, not failing open


async def test_fail_closed_router_down_is_a_fast_5xx(
    tmp_path_factory: pytest.TempPathFactory, session: aiohttp.ClientSession
) -> None:
    with start_stack(tmp_path_factory, "failclosed", fail_open=False) as stack:
        ok = await post(session, stack.url, body_for("prose", SHORT_PROMPT))
        assert ok.status == 200
        await asyncio.to_thread(stack.kill_router)
        for body in (body_for("prose", SHORT_PROMPT), body_for("prose", SHORT_PROMPT, stream=True)):
            started = time.monotonic()
            reply = await post(session, stack.url, body, timeout_s=15)
            assert 500 <= reply.status <= 599, (reply.status, reply.body)
            assert time.monotonic() - started < 3.0
            entry = stack.access_log.entry(reply.request_id)
            assert entry["upstream"] is None  # refused before any pool saw it
            assert entry["details"].startswith("ext_proc_error_gRPC_error_14")  # UNAVAILABLE: router gone
        await asyncio.to_thread(stack.restart_router)
        again = await post(session, stack.url, body_for("prose", SHORT_PROMPT))
        assert again.status == 200
        assert stack.access_log.pool(again.request_id) == "short"


# -- router SIGTERM -------------------------------------------------------------------------------


async def test_sigterm_goes_not_serving_drains_streams_and_exits_zero(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    grace_s = 8.0
    # latency_scale 1: 300 decode steps of ~8 ms, a stream of ~2.5 s.
    with start_stack(tmp_path_factory, "sigterm", latency_scale=1.0, router_grace_s=grace_s) as stack:
        router = stack.routers[0]
        address = f"127.0.0.1:{stack.router_ports[0]}"
        assert health_status(address) == health_pb2.HealthCheckResponse.SERVING
        body = orjson.dumps(body_for("prose", 200, max_tokens=300, seed=5, stream=True))
        async with aiohttp.ClientSession() as session:
            async with session.post(stack.url + "/v1/chat/completions", data=body,
                                    headers={"content-type": "application/json"}) as resp:  # fmt: skip
                assert resp.status == 200
                first = await resp.content.readany()  # the stream is live, so the router holds it
                assert first
                assert router.pid is not None
                os.kill(router.pid, signal.SIGTERM)
                signalled = time.monotonic()
                await asyncio.to_thread(
                    wait_for, lambda: health_status(address) == health_pb2.HealthCheckResponse.NOT_SERVING, 2.0,
                    "NOT_SERVING after SIGTERM",
                )  # fmt: skip
                # New requests meanwhile are served (Envoy stops sending streams to a NOT_SERVING router).
                during = await post(session, stack.url, body_for("prose", SHORT_PROMPT, max_tokens=4))
                assert during.status == 200
                rest = first + await resp.read()
            finished = time.monotonic()
        payloads = sse_payloads(rest)
        assert payloads[-1] == b"[DONE]"
        assert sum(1 for p in payloads if b'"content"' in p) >= 300  # every token arrived
        assert not any(b'"usage"' in p and b'"choices":[]' in p for p in payloads)  # still stripped
        assert router.proc is not None
        code = await asyncio.to_thread(router.proc.wait, grace_s + 2.0)
        exited = time.monotonic()
        assert code == 0, router.log_tail()
        assert finished - signalled > 0.5  # the stream outlived the signal ...
        assert exited - signalled < grace_s  # ... and the process did not wait out the whole grace period


# -- pools down or slow ---------------------------------------------------------------------------


@pytest.mark.parametrize("dead", ["long", "short"])
async def test_pool_down_other_pool_unaffected_and_short_fails_over_to_long(
    tmp_path_factory: pytest.TempPathFactory, session: aiohttp.ClientSession, dead: str
) -> None:
    """A dead long pool: long requests fail fast (503), short ones are unaffected. A dead short pool:
    once Envoy's health check ejects it, short requests (which always fit the long pool) are served
    by the long pool through the aggregate cluster; long requests are unaffected. The access log's
    ``pool`` and the opt-in response header name the pool that really served, not the route's cluster."""
    overrides = {"pool_health_interval_s": 0.5, "served_pool_header": SERVED_POOL_HEADER}
    with start_stack(tmp_path_factory, f"pooldown-{dead}", layout_overrides=overrides) as stack:
        stack.pools[dead].kill()
        cluster, port = {"short": SHORT_CLUSTER, "long": LONG_CLUSTER}[dead], stack.pool_ports[dead]
        await until_async(  # two failed health checks at 0.5 s: Envoy ejects the dead pool
            lambda: asyncio.to_thread(envoy_host_healthy, stack.admin_url, cluster, "127.0.0.1", port),
            f"Envoy to eject the dead {dead} pool",
            ok=lambda healthy: not healthy,
        )
        prompts = {"short": SHORT_PROMPT, "long": LONG_PROMPT}
        for pool, tokens in prompts.items():
            started = time.monotonic()
            reply = await post(session, stack.url, body_for("prose", tokens, max_tokens=8), timeout_s=15)
            elapsed = time.monotonic() - started
            served = stack.access_log.pool(reply.request_id)
            entry = stack.access_log.entry(reply.request_id)
            assert entry["routed"] == pool  # the router's decision is unchanged
            if pool == dead == "long":
                assert reply.status == 503, reply.body  # Envoy: no healthy upstream
                assert elapsed < 5.0
            else:
                assert reply.status == 200, reply.body
                assert served == ("long" if dead == "short" else pool)  # short pool dead: the long pool serves
                assert reply.headers[SERVED_POOL_HEADER] == served
                if pool == dead == "short":
                    assert entry["cluster"] == SHORT_FAILOVER_CLUSTER  # what the log said before: not a pool


async def test_slow_short_pool_spills_short_requests_never_long_ones(
    tmp_path_factory: pytest.TempPathFactory, session: aiohttp.ClientSession
) -> None:
    capacity = 4
    flags = ("--spillover-short-capacity", str(capacity))
    with start_stack(tmp_path_factory, "spill", router_flags=flags) as stack:
        await set_faults(session, stack, extra_latency_ms=1_500.0)  # both pools slow: requests overlap
        shorts = [orjson.dumps(body_for("prose", SHORT_PROMPT, max_tokens=8, seed=i)) for i in range(12)]
        longs = [orjson.dumps(body_for("prose", LONG_PROMPT, max_tokens=8, seed=i)) for i in range(4)]
        replies = await fire(stack, shorts + longs)
        assert all(isinstance(r, Reply) and r.status == 200 for r in replies), replies
        served = [stack.access_log.pool(r.request_id) for r in replies if isinstance(r, Reply)]
        # The first `capacity` short requests fill the short pool; the other 8 spill to the long one.
        assert Counter(served[:12]) == {"short": capacity, "long": 12 - capacity}
        assert served[12:] == ["long"] * 4
        # Pressure is in-flight count: once the slow requests finished, short requests go short again.
        await set_faults(session, stack, extra_latency_ms=0.0)
        after = await post(session, stack.url, shorts[0])
        assert stack.access_log.pool(after.request_id) == "short"


# -- calibration poisoning ------------------------------------------------------------------------


@pytest.mark.parametrize("lie", ["zero", "huge", "random"])
async def test_lying_usage_cannot_move_the_ratio_or_send_long_requests_short(
    tmp_path_factory: pytest.TempPathFactory, session: aiohttp.ClientSession, lie: str
) -> None:
    metrics_port = free_port()
    flags = ("--telemetry-metrics-port", str(metrics_port))
    with start_stack(tmp_path_factory, f"poison-{lie}", router_flags=flags) as stack:
        honest = await fire(stack, [orjson.dumps(body_for("prose", 900, max_tokens=4, seed=i)) for i in range(30)])
        assert all(isinstance(r, Reply) and r.status == 200 for r in honest)
        wait_samples(stack, "prose", 30)
        before = calibration(stack)["prose"]

        await set_faults(session, stack, usage_lie=lie)
        lies = [orjson.dumps(body_for("prose", 900, max_tokens=4, seed=100 + i, stream=i % 2 == 0)) for i in range(60)]
        poisoned = await fire(stack, lies)
        assert all(isinstance(r, Reply) and r.status == 200 for r in poisoned)

        def rejected() -> float:
            status, text = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            return prometheus_value(text.decode(), "budget_router_usage_rejected_total") if status == 200 else 0.0

        await asyncio.to_thread(wait_for, lambda: rejected() >= 58, 10.0, "the lies to be counted as rejected")
        counted_at = time.time()
        after = await until_async(  # a save after the last lie was counted (saves run every second)
            lambda: (saved_at(stack), calibration(stack)["prose"]),
            "a calibration save after the lies were counted",
            ok=lambda seen: seen[0] > counted_at,
        )
        after = after[1]
        assert 0.5 <= after["mean"] <= 8.0
        assert abs(after["mean"] - before["mean"]) <= 0.05 * before["mean"], (before, after)
        assert after["samples"] - before["samples"] <= 2, (before, after)

        # Requests whose true budget exceeds the short pool's 8,192 window still go long.
        await set_faults(session, stack, usage_lie="none")
        for tokens, max_tokens in ((8_300, 8), (7_000, 1_500), (4_000, 4_500)):
            reply = await post(session, stack.url, body_for("prose", tokens, max_tokens=max_tokens, seed=tokens))
            assert reply.status == 200, reply.body
            assert stack.access_log.pool(reply.request_id) == "long", (tokens, max_tokens)
        ok = await post(session, stack.url, body_for("prose", SHORT_PROMPT, max_tokens=8))
        assert stack.access_log.pool(ok.request_id) == "short"
