"""Real vLLM's refusals, real vLLM's load and a router crash, through the real Envoy.

- A prompt longer than the short pool's context gets vLLM 0.32's 400 ("at least L+1 input tokens");
  Envoy's net resends it to the long pool and the client never sees it.
- A prompt of exactly the short context leaves no room for output: vLLM answers 400 "max_tokens must
  be at least 1"; the same net covers it.
- Live load: the router reads the engines' own ``/metrics`` and spills on what they report.
- A router SIGKILLed while real engines serve costs no request (Envoy fails open to the long pool).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import aiohttp
import pytest

from extproc.server.vllm_metrics import parse_engine_load
from extproc.stack.stack import Stack
from extproc.workload.prompts import prompt_text
from tests.e2e.client import Reply, post
from tests.vllm.conftest import SHORT, stack_on_engines
from tests.vllm.engine_client import EngineClient, decisions, exact_chat
from tests.waiting import until_async

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

# The router believes the short pool holds 8K, so prompts of 2-8K are (wrongly) routed short.
BELIEVES_8K = ("--routing-short-context", "8192", "--routing-b-short", "8192")


@pytest.fixture(scope="module")
def misrouting_stack(vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with stack_on_engines(vllm_stack, tmp_path_factory, "vllm-net", router_flags=BELIEVES_8K) as stack:
        yield stack


def _chat(stack: Stack, text: str, max_tokens: int | None, stream: bool = False) -> dict[str, object]:
    body: dict[str, object] = {"model": stack.model, "messages": [{"role": "user", "content": text}],
                               "ignore_eos": True, "stream": stream}  # fmt: skip
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body


async def test_a_real_over_context_400_is_resent_to_the_long_pool(
    misrouting_stack: Stack, short_engine: EngineClient, long_engine: EngineClient
) -> None:
    text = prompt_text("prose", 3_000, seed=21)
    direct = short_engine.chat(text, max_tokens=8)
    assert direct.status == 400  # what the short pool itself says, for the record
    message = direct.json()["error"]["message"]
    assert f"at least {SHORT.max_model_len + 1} input tokens" in message, message
    async with aiohttp.ClientSession() as session:
        replies = [await post(session, misrouting_stack.url, _chat(misrouting_stack, text, 8, stream))
                   for stream in (False, True)]  # fmt: skip
    assert [r.status for r in replies] == [200, 200], [r.body[:200] for r in replies]
    found = decisions(misrouting_stack, [r.request_id for r in replies])
    for reply in replies:
        log = misrouting_stack.access_log.entry(reply.request_id)
        assert (log["routed"], log["attempts"], misrouting_stack.access_log.pool_of(reply.request_id)) == (
            "short", 2, "long")  # fmt: skip
        decision = found[reply.request_id]
        assert (decision["attempts"], decision["served_pool"]) == (2, "long")
        assert decision["prompt_tokens"] == long_engine.chat_count(text)  # learned from the long pool's usage


async def test_a_prompt_of_exactly_the_short_context_gets_max_tokens_400_then_the_long_pool(
    misrouting_stack: Stack, short_engine: EngineClient
) -> None:
    text = exact_chat(short_engine, lambda n, seed: prompt_text("prose", n, seed=seed), SHORT.max_model_len)
    # No room for one output token, asked for or not: the short pool refuses both ways. (Through Envoy only
    # with max_tokens: without it the long pool would generate to the end of its 16K context.)
    for max_tokens in (None, 4):
        direct = short_engine.chat(text, max_tokens=max_tokens)
        assert direct.status == 400, direct.body[:200]
        assert "max_tokens must be at least 1, got 0" in direct.json()["error"]["message"]
    async with aiohttp.ClientSession() as session:
        reply = await post(session, misrouting_stack.url, _chat(misrouting_stack, text, 4))
    assert reply.status == 200, reply.body[:200]
    assert reply.json()["usage"]["completion_tokens"] == 4
    log = misrouting_stack.access_log.entry(reply.request_id)
    assert (log["routed"], log["attempts"], misrouting_stack.access_log.pool_of(reply.request_id)) == (
        "short", 2, "long")  # fmt: skip


async def test_live_load_is_read_from_the_engines_metrics_and_drives_spilling(
    vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory, short_engine: EngineClient
) -> None:
    """Four long generations hold the short engine busy; its /metrics says so and the router, told the
    pool holds two, spills what comes next, on the engine's word (``pressure_source: live``)."""
    flags = ("--spillover-short-capacity", "2", "--live-load-scrape-interval-s", "0.1")
    with stack_on_engines(vllm_stack, tmp_path_factory, "vllm-live", live_load=True, router_flags=flags) as stack:
        async with aiohttp.ClientSession() as session:
            hogs = [asyncio.create_task(post(session, short_engine_url(stack),
                                             _chat(stack, prompt_text("prose", 50, seed=30 + i), 1500),
                                             timeout_s=300.0))
                    for i in range(4)]  # fmt: skip
            await until_async(lambda: _running(short_engine), "the short engine running the 4 hogs",
                              ok=lambda n: n >= 4, timeout_s=60.0, interval_s=0.05)  # fmt: skip

            async def probe() -> Reply:
                return await post(session, stack.url, _chat(stack, prompt_text("prose", 40, seed=40), 2))

            spilled = await until_async(
                lambda: _spilled(stack, probe), "a request spilled on live load", timeout_s=60.0, interval_s=0.1
            )
            for hog in hogs:
                hog.cancel()
            await asyncio.gather(*hogs, return_exceptions=True)
    assert spilled["pressure_source"] == "live" and spilled["pool"] == "long", spilled
    assert spilled["short_pressure"] >= 1.0, spilled


def short_engine_url(stack: Stack) -> str:
    return stack.pool_url("short")  # the hogs go straight to the engine: only its /metrics knows them


def _running(engine: EngineClient) -> float:
    load = parse_engine_load(engine.metrics())
    return load.running if load is not None else 0.0


async def _spilled(stack: Stack, probe) -> dict[str, object] | None:  # type: ignore[no-untyped-def]
    reply = await probe()
    assert reply.status == 200, reply.body[:200]
    decision = decisions(stack, [reply.request_id])[reply.request_id]
    return decision if decision.get("spilled") else None


async def test_a_router_killed_mid_traffic_costs_no_request(
    vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory, short_engine: EngineClient
) -> None:
    with stack_on_engines(vllm_stack, tmp_path_factory, "vllm-kill") as stack:
        async with aiohttp.ClientSession() as session:

            async def one(i: int) -> Reply:
                return await post(session, stack.url, _chat(stack, prompt_text("prose", 80 + i, seed=50 + i), 16),
                                  timeout_s=120.0)  # fmt: skip

            first = [asyncio.create_task(one(i)) for i in range(8)]
            await until_async(lambda: _running(short_engine), "the first requests in the short engine",
                              timeout_s=60.0, interval_s=0.02)  # fmt: skip
            stack.kill_router()  # with requests in flight, their response phase still to be processed
            during = [asyncio.create_task(one(10 + i)) for i in range(8)]
            replies = await asyncio.gather(*first, *during)
            assert [r.status for r in replies] == [200] * 16, [r.body[:120] for r in replies if r.status != 200]
            assert {stack.access_log.pool(r.request_id) for r in replies[8:]} == {"long"}  # failed open
            stack.restart_router()
            after = await one(30)
        assert after.status == 200
        assert stack.access_log.pool(after.request_id) == "short"  # routed by the restarted router
