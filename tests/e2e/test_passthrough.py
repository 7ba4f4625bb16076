"""Responses reach the client exactly as the backend sent them, while the router learns from them.

The emulator derives ids and text from the exact request body, seed and frozen clock, so the same body
sent to the pool directly is the reference. The one deliberate difference: a stream whose client did
not ask for usage goes upstream with ``include_usage`` injected (so the router can learn), and the
router removes the usage-only chunk again; the reference for that case is the injected body sent
directly, minus that chunk.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest

from extproc.server.exchange import inject_include_usage
from extproc.stack.stack import Stack
from tests.e2e.client import body_for, is_usage_only, post, samples, sse_payloads, wait_samples

pytestmark = pytest.mark.e2e


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _received(session: aiohttp.ClientSession, stack: Stack, pool: str, request_id: str) -> dict:
    async with session.get(stack.pool_url(pool) + "/admin/requests?limit=50") as resp:
        entries = (await resp.json())["requests"]
    matches = [e for e in entries if e["headers"].get("x-request-id") == request_id]
    assert len(matches) == 1, f"{pool} pool saw {len(matches)} requests with id {request_id}"
    return matches[0]


async def test_non_streaming_body_is_byte_identical_and_learned(
    e2e_stack: Stack, session: aiohttp.ClientSession
) -> None:
    body = orjson.dumps(body_for("code", 900, max_tokens=40, seed=11))
    before = samples(e2e_stack, "code")
    via_envoy = await post(session, e2e_stack.url, body)
    direct = await post(session, e2e_stack.pool_url("short"), body)
    assert e2e_stack.access_log.pool(via_envoy.request_id) == "short"
    assert via_envoy.status == direct.status == 200
    assert via_envoy.body == direct.body
    assert via_envoy.headers["content-type"] == direct.headers["content-type"]
    wait_samples(e2e_stack, "code", before + 1)


async def test_stream_that_asked_for_usage_is_byte_identical_and_learned(
    e2e_stack: Stack, session: aiohttp.ClientSession
) -> None:
    body = orjson.dumps(body_for("code", 700, max_tokens=30, seed=12, stream=True, include_usage=True))
    before = samples(e2e_stack, "code")
    via_envoy = await post(session, e2e_stack.url, body)
    direct = await post(session, e2e_stack.pool_url("short"), body)
    assert via_envoy.status == direct.status == 200
    assert via_envoy.headers["content-type"].startswith("text/event-stream")
    assert via_envoy.body == direct.body
    payloads = sse_payloads(via_envoy.body)
    assert payloads[-1] == b"[DONE]"
    assert is_usage_only(payloads[-2])  # the client asked for it: it gets it
    received = await _received(session, e2e_stack, "short", via_envoy.request_id)
    assert received["body_sha256"] == hashlib.sha256(body).hexdigest()  # untouched upstream
    wait_samples(e2e_stack, "code", before + 1)


async def test_injected_usage_never_reaches_a_client_that_did_not_ask(
    e2e_stack: Stack, session: aiohttp.ClientSession
) -> None:
    doc = body_for("code", 650, max_tokens=25, seed=13, stream=True)
    body = orjson.dumps(doc)
    injected = inject_include_usage(body, doc)
    before = samples(e2e_stack, "code")
    via_envoy = await post(session, e2e_stack.url, body)
    reference = await post(session, e2e_stack.pool_url("short"), injected)
    assert via_envoy.status == reference.status == 200
    # Upstream got the injected body (so the router learns) ...
    received = await _received(session, e2e_stack, "short", via_envoy.request_id)
    assert received["body_sha256"] == hashlib.sha256(injected).hexdigest()
    assert received["stream_options"] == {"include_usage": True}
    # ... the client gets every other byte of that stream, and no usage-only chunk.
    client_payloads = sse_payloads(via_envoy.body)
    reference_payloads = sse_payloads(reference.body)
    assert any(is_usage_only(p) for p in reference_payloads)
    assert not any(is_usage_only(p) for p in client_payloads)
    assert client_payloads == [p for p in reference_payloads if not is_usage_only(p)]
    events = reference.body.split(b"\n\n")
    assert via_envoy.body == b"\n\n".join(e for e in events if not (e and is_usage_only(e.removeprefix(b"data: "))))
    wait_samples(e2e_stack, "code", before + 1)
