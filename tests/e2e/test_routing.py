"""Routing through the real Envoy: which pool serves what, and what never reaches the short pool."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from extproc.stack.stack import Stack
from extproc.workload.corpus import corpus_text
from tests.e2e.client import body_for, post

pytestmark = pytest.mark.e2e


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_short_request_is_served_by_the_short_pool(e2e_stack: Stack, session: aiohttp.ClientSession) -> None:
    reply = await post(session, e2e_stack.url, body_for("prose", 300, max_tokens=16))
    assert reply.status == 200, reply.body
    assert reply.json()["usage"]["completion_tokens"] == 16
    assert e2e_stack.access_log.pool(reply.request_id) == "short"


async def test_long_prompt_is_served_by_the_long_pool(e2e_stack: Stack, session: aiohttp.ClientSession) -> None:
    reply = await post(session, e2e_stack.url, body_for("prose", 12_000, max_tokens=16))
    assert reply.status == 200, reply.body
    assert reply.json()["usage"]["prompt_tokens"] > 12_000
    assert e2e_stack.access_log.pool(reply.request_id) == "long"


async def test_max_tokens_alone_pushes_a_short_prompt_long(e2e_stack: Stack, session: aiohttp.ClientSession) -> None:
    prompt = body_for("prose", 1_000, max_tokens=16)
    short = await post(session, e2e_stack.url, prompt)
    pushed = await post(session, e2e_stack.url, {**prompt, "max_tokens": 7_800})
    assert (short.status, pushed.status) == (200, 200), pushed.body
    assert e2e_stack.access_log.pool(short.request_id) == "short"
    # 1,000 + framing + 7,800 > 8,192: the short pool would have cut the output at its context (vLLM 0.32;
    # older vLLM answered a context-length 400).
    assert e2e_stack.access_log.pool(pushed.request_id) == "long"
    assert pushed.json()["usage"]["completion_tokens"] == 7_800


async def test_client_supplied_routing_header_is_overwritten(e2e_stack: Stack, session: aiohttp.ClientSession) -> None:
    reply = await post(session, e2e_stack.url, body_for("code", 10_000), headers={"x-budget-pool": "short"})
    assert reply.status == 200, reply.body
    assert e2e_stack.access_log.pool(reply.request_id) == "long"
    async with session.get(e2e_stack.pool_url("long") + "/admin/requests?limit=20") as resp:
        seen = [r for r in (await resp.json())["requests"] if r["headers"].get("x-request-id") == reply.request_id]
    assert [r["headers"].get("x-budget-pool") for r in seen] == ["long"]


async def test_one_megabyte_prompt_goes_through_to_the_long_pool(
    e2e_stack: Stack, session: aiohttp.ClientSession
) -> None:
    text = corpus_text("prose")
    text = (text * (1_048_576 // len(text.encode()) + 1))[:1_048_576]
    body = orjson.dumps({"model": body_for("prose", 1)["model"], "max_tokens": 8,
                         "messages": [{"role": "user", "content": text}]})  # fmt: skip
    assert len(body) > 1_000_000
    via_envoy = await post(session, e2e_stack.url, body)
    direct = await post(session, e2e_stack.pool_url("long"), body)
    assert e2e_stack.access_log.pool(via_envoy.request_id) == "long"
    # ~250K tokens exceed even the long pool's 64K window: the client gets vLLM's own 400, unchanged.
    assert direct.status == 400
    assert (via_envoy.status, via_envoy.body) == (direct.status, direct.body)
    assert b"maximum context length" in via_envoy.body


async def test_malformed_json_gets_the_backends_400_quickly(e2e_stack: Stack, session: aiohttp.ClientSession) -> None:
    broken = b'{"model": "x", "messages": [{"role": "user", "content": "hi"}'
    started = time.monotonic()
    via_envoy = await post(session, e2e_stack.url, broken, timeout_s=20)
    elapsed = time.monotonic() - started
    direct = await post(session, e2e_stack.pool_url("long"), broken)
    assert via_envoy.status == 400
    assert via_envoy.body == direct.body
    assert via_envoy.json()["error"]["code"] == 400
    assert e2e_stack.access_log.pool(via_envoy.request_id) == "long"
    assert elapsed < 5.0
