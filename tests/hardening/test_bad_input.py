"""Bad input, one test per row of the table in docs/bad-input.md.

HTTP rows go through the real Envoy, the router and both emulated pools (one stack for the module,
latency model off). Each row states what the client gets, which pool served it and what the router
decided, and the test reads all of it from outside: the client's answer, Envoy's access log, the
emulators' request logs (with the router's ``x-budget-reason`` header), the router's JSON decision
line and its Prometheus counters. Every row also checks that the request reached exactly one pool,
with the body the client sent, and that the router counts nothing in flight afterwards.

The SSE rows drive the router's real gRPC server with a client that plays Envoy, because the
emulator only produces well-formed streams; they cut and garble the stream the way a backend or a
network can, and check what the client would receive and what the router learned.

The router is configured with a request limit of 512 KiB and Envoy with a buffer of 1 MiB, so both
"body over the limit" behaviours are exercised: the router's ``body_too_large`` long route between
the two, Envoy's own 413 above Envoy's.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg

from extproc.algorithm.request_shape import MAX_PIECES
from extproc.config import load_config
from extproc.gateway.envoy_config import MIB
from extproc.server.exchange import RouterRuntime
from extproc.server.service import RouterServer
from tests.envoy_play import request_body, request_headers, response_body, response_headers
from tests.hardening import (
    CHAT_PATH,
    MODEL,
    POOL_HEADER,
    REASON_HEADER,
    ObservedStack,
    Reply,
    chat,
    increase,
    observed_stack,
    send,
)
from tests.waiting import until_async

pytestmark = pytest.mark.e2e

ROUTER_LIMIT = 512 * 1024  # --server-max-request-body-bytes
ENVOY_LIMIT = MIB  # EnvoyLayout.max_body_bytes (Envoy's buffer; 413 above it)
TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


# -- the shared stack ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedStack]:
    with observed_stack(
        tmp_path_factory,
        "bad-input",
        router_flags=("--server-max-request-body-bytes", str(ROUTER_LIMIT)),
        layout_overrides={"max_body_bytes": ENVOY_LIMIT},
    ) as obs:
        yield obs


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


# -- what a row says ------------------------------------------------------------------------------------
def _json(reply: Reply) -> Any:
    return orjson.loads(reply.body)


def _is_completion(reply: Reply) -> bool:
    doc = _json(reply)
    return bool(doc["choices"]) and doc["usage"]["completion_tokens"] > 0


def _is_error(reply: Reply) -> bool:
    err = _json(reply)["error"]
    return err["code"] == reply.status and isinstance(err["message"], str) and err["message"]


def _is_flat_error(reply: Reply) -> bool:
    doc = _json(reply)
    return doc["object"] == "error" and doc["code"] == reply.status and "error" not in doc


def _is_detail(reply: Reply) -> bool:
    return isinstance(_json(reply)["detail"], str)


def _is_models(reply: Reply) -> bool:
    return _json(reply)["data"][0]["id"] == MODEL


def _is_envoy_local(reply: Reply) -> bool:
    return reply.body == b"Payload Too Large"


def data_payloads(raw: bytes) -> list[bytes]:
    return [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]


def _is_sse(reply: Reply) -> bool:
    payloads = data_payloads(reply.body)
    return reply.headers.get("content-type", "").startswith("text/event-stream") and payloads[-1] == b"[DONE]"


SHAPES: dict[str, Callable[[Reply], bool]] = {
    "completion": _is_completion,
    "error": _is_error,
    "flat_error": _is_flat_error,
    "detail": _is_detail,
    "models": _is_models,
    "envoy_local": _is_envoy_local,
    "sse": _is_sse,
}


@dataclass(frozen=True)
class Row:
    id: str
    body: bytes
    status: int
    shape: str  # key of SHAPES: the body's form
    pool: str | None  # the pool that served it; None: Envoy answered, no pool saw it
    reason: str  # the router's decision reason ("" when it made none)
    detail: str = ""  # the router's finer cause for unparseable / no_body decisions
    method: str = "POST"
    path: str = CHAT_PATH
    headers: Mapping[str, str] = field(default_factory=dict)
    body_changed: bool = False  # the router rewrote the body (include_usage injection)
    logged_upstream: bool = True  # the emulator logs generation requests only (not 404/405, /v1/models)


def dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


VALID = dumps(chat())
STREAM = {"stream": True}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]
TOOL_MESSAGES = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "sunny, 21 C"},
]  # fmt: skip
IMAGE_PARTS = [
    {"type": "text", "text": "What is in this picture?"},
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
]
UNPARSEABLE = "unparseable"
TOO_COMPLEX = "too_complex"
# A content part nesting 1,000 objects deep (orjson's limit is 1,024): sized iteratively, once a
# RecursionError that ended the ext_proc stream (fail-open: long, unrouted, and a 240 KB traceback).
DEEP_PART = b'{"type":"x","v":' + b'{"n":' * 1000 + b"{}" + b"}" * 1000 + b"}"

ROWS = [
    Row("empty_body", b"", 400, "error", "long", "no_body", "request has no body"),
    Row("not_json", b"hello, world", 400, "error", "long", UNPARSEABLE, "invalid_json"),
    Row("json_array", dumps([{"role": "user", "content": "hi"}]), 400, "error", "long", UNPARSEABLE, "not_object"),
    Row("json_number", b"42", 400, "error", "long", UNPARSEABLE, "not_object"),
    Row("json_null", b"null", 400, "error", "long", UNPARSEABLE, "not_object"),
    Row("truncated_json", VALID[: len(VALID) // 2], 400, "error", "long", UNPARSEABLE, "invalid_json"),
    Row("nesting_100k", b'{"messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "error", "long",
        TOO_COMPLEX, "too_many_containers"),
    Row("messages_missing", dumps({"model": MODEL, "max_tokens": 8}), 400, "error", "long", UNPARSEABLE,
        "bad_messages"),
    Row("messages_not_list", dumps(chat() | {"messages": "hello"}), 400, "error", "long", UNPARSEABLE,
        "bad_messages"),
    Row("messages_empty", dumps(chat() | {"messages": []}), 200, "completion", "long", UNPARSEABLE, "bad_messages"),
    Row("message_not_object", dumps(chat() | {"messages": ["hello"]}), 400, "error", "long", UNPARSEABLE,
        "bad_messages"),
    Row("content_number", dumps(chat(42)), 400, "error", "long", UNPARSEABLE, "bad_messages"),
    Row("content_part_string", dumps(chat(["hello"])), 200, "completion", "long", UNPARSEABLE, "bad_messages"),
    Row("content_image_parts", dumps(chat(IMAGE_PARTS)), 200, "completion", "short", "threshold"),
    Row("tool_calls_and_tools", dumps(chat() | {"messages": TOOL_MESSAGES, "tools": TOOLS}), 200, "completion",
        "short", "threshold"),
    Row("max_tokens_negative", dumps(chat(max_tokens=-5)), 400, "error", "long", UNPARSEABLE, "invalid_max_tokens"),
    Row("max_tokens_zero", dumps(chat(max_tokens=0)), 400, "error", "long", UNPARSEABLE, "invalid_max_tokens"),
    Row("max_tokens_integral_float", dumps(chat(max_tokens=8.0)), 200, "completion", "short", "threshold"),
    Row("max_tokens_fractional", dumps(chat(max_tokens=8.5)), 400, "error", "long", UNPARSEABLE,
        "invalid_max_tokens"),
    Row("max_tokens_string", dumps(chat(max_tokens="8")), 200, "completion", "long", UNPARSEABLE,
        "invalid_max_tokens"),
    Row("max_tokens_bool", dumps(chat(max_tokens=True)), 200, "completion", "long", UNPARSEABLE,
        "invalid_max_tokens"),
    Row("max_tokens_huge", dumps(chat(max_tokens=10**12)), 400, "error", "long", "over_long_context"),
    Row("max_tokens_null", dumps(chat(max_tokens=None)), 200, "completion", "short", "threshold"),
    Row("both_limits_completion_small", dumps(chat(max_tokens=60_000, max_completion_tokens=8)), 200, "completion",
        "short", "threshold"),
    Row("both_limits_completion_large", dumps(chat(max_tokens=8, max_completion_tokens=9_000)), 200, "completion",
        "long", "capacity"),
    Row("duplicate_keys_last_wins", VALID[:-1] + b',"max_tokens":9000}', 200, "completion", "long", "capacity"),
    Row("invalid_utf8", VALID.replace(b"hello", b"hel\xff\xfelo"), 400, "error", "long", UNPARSEABLE,
        "invalid_json"),
    Row("lone_surrogate_escape", VALID.replace(b"hello", b"hel\\ud800lo"), 400, "error", "long", UNPARSEABLE,
        "invalid_json"),
    Row("utf8_bom", b"\xef\xbb\xbf" + VALID, 400, "error", "long", UNPARSEABLE, "invalid_json"),
    Row("nan_literal", VALID.replace(b'"max_tokens":8', b'"max_tokens":NaN'), 400, "error", "long", UNPARSEABLE,
        "invalid_json"),
    Row("nesting_part_1000", dumps(chat(["@@"], max_tokens=9_000)).replace(b'"@@"', DEEP_PART), 400, "error",
        "long", "capacity"),
    Row("text_parts_over_max_pieces", dumps(chat([{"type": "text", "text": "a"}] * (MAX_PIECES + 1))), 200,
        "completion", "long", TOO_COMPLEX, "too_many_pieces"),
    Row("over_router_limit", VALID[:-1] + b" " * (ROUTER_LIMIT + 1) + b"}", 200, "completion", "long",
        UNPARSEABLE, "body_too_large"),
    Row("over_envoy_limit", VALID[:-1] + b" " * ENVOY_LIMIT + b"}", 413, "envoy_local", None, UNPARSEABLE,
        "body_too_large"),
    Row("gzip_body", gzip.compress(VALID), 400, "error", "long", UNPARSEABLE, "encoded_body",
        headers={"content-encoding": "gzip"}),
    Row("unknown_path", VALID, 404, "detail", "long", UNPARSEABLE, "unknown_endpoint", path="/v1/embeddings",
        logged_upstream=False),
    Row("get_with_body", VALID, 405, "detail", "long", UNPARSEABLE, "unknown_endpoint", method="GET",
        logged_upstream=False),
    Row("get_without_body", b"", 200, "models", "long", "no_body", "request has no body", method="GET",
        path="/v1/models", logged_upstream=False),
    Row("query_string", VALID, 200, "completion", "short", "threshold", path=CHAT_PATH + "?api-version=2024"),
    Row("completions_token_ids", dumps({"model": MODEL, "prompt": [9906, 1917], "max_tokens": 8}), 200,
        "completion", "short", "threshold", path="/v1/completions"),
    Row("completions_empty_prompt", dumps({"model": MODEL, "prompt": [], "max_tokens": 8}), 400, "error", "long",
        UNPARSEABLE, "bad_prompt", path="/v1/completions"),
    Row("client_pool_header_short", dumps(chat(max_tokens=9_000)), 200, "completion", "long", "capacity",
        headers={POOL_HEADER: "short"}),
    Row("client_pool_header_long", VALID, 200, "completion", "short", "threshold", headers={POOL_HEADER: "long"}),
    Row("client_reason_header", VALID, 200, "completion", "short", "threshold", headers={REASON_HEADER: "forged"}),
    Row("malformed_traceparent", VALID, 200, "completion", "short", "threshold",
        headers={"traceparent": "00-not-a-trace-id-01"}),
    Row("stream_include_usage_false", dumps(chat(**STREAM, stream_options={"include_usage": False})), 200, "sse",
        "short", "threshold", body_changed=True),
]  # fmt: skip

# Rows whose expectation is what vLLM (the emulator) answers directly (the router once changed these).
VLLM_PARITY = {
    "stream_options_not_object": (
        dumps(chat(**STREAM, stream_options="yes")),
        "the router replaces an invalid stream_options with {'include_usage': true}: the client gets 200 "
        "where vLLM answers 400",
    ),
    "stream_options_empty_object": (
        dumps(chat(**STREAM, stream_options={})),
        "vLLM defaults include_usage to true when stream_options is given; the router treats {} as "
        "'not asked' and strips the usage chunk the client would have received",
    ),
    "include_usage_lax_true": (
        dumps(chat(**STREAM, stream_options={"include_usage": 1})),
        "vLLM reads include_usage=1 as true (pydantic lax bool); the router strips the usage chunk",
    ),
}


# -- driving a row ----------------------------------------------------------------------------------
async def check_row(obs: ObservedStack, session: aiohttp.ClientSession, row: Row) -> tuple[Reply, dict[str, Any]]:
    """Send one row and check every outside view of it; returns the reply and the upstream entry."""
    before = await obs.metrics(session)
    reply = await send(session, obs.url, row.method, row.path, row.body, row.headers)
    assert reply.status == row.status, reply.body[:300]
    assert SHAPES[row.shape](reply), reply.body[:300]

    received = await obs.received(session, reply.request_id)
    entry: dict[str, Any] = {}
    if row.pool is not None:
        assert obs.stack.access_log.pool(reply.request_id) == row.pool
    if row.pool is None or not row.logged_upstream:
        assert received == {"short": [], "long": []}
    else:
        other = "long" if row.pool == "short" else "short"
        assert (len(received[row.pool]), len(received[other])) == (1, 0), received
        entry = received[row.pool][0]
        assert entry["headers"][POOL_HEADER] == row.pool
        assert entry["headers"][REASON_HEADER] == row.reason  # the router's own, never a client copy
        if not row.body_changed:
            assert (entry["body_bytes"], entry["body_sha256"]) == (len(row.body), hashlib.sha256(row.body).hexdigest())

    decision = obs.decision(reply.request_id)
    decided = row.pool or ("long" if row.reason else "")  # Envoy may answer a request the router routed long
    assert (decision["pool"], decision["reason"], decision["detail"]) == (decided, row.reason, row.detail)

    after = await obs.metrics(session)
    if row.reason:
        endpoint = decision.get("endpoint") or "other"
        labels = {"pool": decided, "reason": row.reason, "endpoint": endpoint}
        assert increase(before, after, "budget_router_requests_total", **labels) == 1
    if row.reason == UNPARSEABLE:
        assert increase(before, after, "budget_router_unparseable_total", detail=row.detail) == 1
    if row.reason == TOO_COMPLEX:
        assert increase(before, after, "budget_router_too_complex_total", detail=row.detail) == 1
    await obs.wait_idle(session)
    return reply, entry


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_row(observed: ObservedStack, session: aiohttp.ClientSession, row: Row) -> None:
    reply, entry = await check_row(observed, session, row)
    if row.id == "malformed_traceparent":
        # The router starts a fresh trace and sends a valid context upstream instead of the garbage.
        assert TRACEPARENT.match(entry["headers"]["traceparent"]), entry["headers"]
    if row.id == "stream_include_usage_false":
        assert usage_chunks(reply) == 0  # the injected usage chunk was removed again
        assert entry["stream_options"] == {"include_usage": True}
    if row.id == "over_router_limit":
        # Its content-length said it all: decided at the headers, the body never went to the router.
        assert int(observed.stack.access_log.entry(reply.request_id)["extproc_bytes_sent"]) < 4096


@pytest.mark.parametrize("case", sorted(VLLM_PARITY))
async def test_stream_options_like_vllm(
    observed: ObservedStack, session: aiohttp.ClientSession, case: str
) -> None:
    """Through the router the client gets what the pool answers directly: the same status, and the
    usage chunk exactly when the pool sends one. (Ids differ: the emulator derives them from the body.)"""
    body, _why = VLLM_PARITY[case]
    via = await send(session, observed.url, "POST", CHAT_PATH, body, {})
    direct = await send(session, observed.stack.pool_url("short"), "POST", CHAT_PATH, body, {})
    assert (via.status, usage_chunks(via)) == (direct.status, usage_chunks(direct))


def usage_chunks(reply: Reply) -> int:
    return sum(1 for p in data_payloads(reply.body) if p.startswith(b"{") and b'"usage"' in p)


async def test_null_stream_options_still_learns(
    observed: ObservedStack, session: aiohttp.ClientSession
) -> None:
    """An explicit ``stream_options: null`` is replaced, not shadowed: the router still learns from it
    (a prepended key would lose to the client's later null upstream)."""
    plain = await send(session, observed.url, "POST", CHAT_PATH, dumps(chat(stream=True)), {})
    null = await send(session, observed.url, "POST", CHAT_PATH, dumps(chat(stream=True, stream_options=None)), {})
    assert plain.status == null.status == 200
    assert observed.decision(plain.request_id)["usage_source"] == "sse"
    assert observed.decision(null.request_id)["usage_source"] == "sse"


# -- upstream errors (emulator fault knobs) ------------------------------------------------------------
async def set_faults(session: aiohttp.ClientSession, obs: ObservedStack, pool: str, **faults: Any) -> None:
    async with session.post(obs.stack.pool_url(pool) + "/admin/faults", json=faults) as resp:
        assert resp.status == 200, await resp.text()


async def test_upstream_503(observed: ObservedStack, session: aiohttp.ClientSession) -> None:
    row = Row("upstream_503", dumps(chat(max_tokens=9_000)), 503, "error", "long", "capacity")
    await set_faults(session, observed, "long", error_rate=1.0, error_status=503)
    try:
        await check_row(observed, session, row)
    finally:
        await set_faults(session, observed, "long", error_rate=0.0)


async def test_a_short_pool_400_is_retried_long_and_a_400_from_both_reaches_the_client(
    observed: ObservedStack, session: aiohttp.ClientSession
) -> None:
    """Envoy's net resends a short-pool 400 to the long pool once: the client gets the long pool's
    answer, and a request both pools reject gets the long pool's own (flat-format) 400, counted."""
    retries = "budget_router_overflow_retries_total"
    await set_faults(session, observed, "short", error_rate=1.0, error_status=400, error_shape="flat")
    try:
        before = await observed.metrics(session)
        rescued = await send(session, observed.url, "POST", CHAT_PATH, VALID, {})
        await set_faults(session, observed, "long", error_rate=1.0, error_status=400, error_shape="flat")
        rejected = await send(session, observed.url, "POST", CHAT_PATH, VALID, {})
        await observed.wait_idle(session)
        after = await observed.metrics(session)
    finally:
        for pool in ("short", "long"):
            await set_faults(session, observed, pool, error_rate=0.0, error_shape="nested")
    assert rescued.status == 200 and SHAPES["completion"](rescued)
    assert rejected.status == 400 and SHAPES["flat_error"](rejected)
    for reply, outcome in ((rescued, "served"), (rejected, "rejected")):
        received = await observed.received(session, reply.request_id)
        assert (len(received["short"]), len(received["long"])) == (1, 1)  # one attempt on each pool
        decision = observed.decision(reply.request_id)
        assert (decision["pool"], decision["attempts"], decision["served_pool"]) == ("short", 2, "long")
        assert increase(before, after, retries, category=decision["category"], outcome=outcome) == 1


async def test_client_disconnects_mid_stream(observed: ObservedStack, session: aiohttp.ClientSession) -> None:
    body = dumps(chat(max_tokens=8_000, stream=True))
    request_id = "bad-disconnect"
    headers = {"content-type": "application/json", "x-request-id": request_id}
    async with session.post(observed.url + CHAT_PATH, data=body, headers=headers) as resp:
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readany(), 5.0)
        assert first.startswith(b"data:")
        resp.close()  # drop the connection with most of the stream unread
    await observed.wait_idle(session)
    decision = observed.decision(request_id)
    assert (decision["pool"], decision["reason"]) == ("short", "threshold")
    log = observed.router_log
    assert "Traceback" not in log and "router error" not in log


# -- SSE responses the emulator never produces, through the real gRPC server -------------------------
USAGE_EVENT = (
    b'data: {"id":"x","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":57,'
    b'"completion_tokens":3,"total_tokens":60}}\n\n'
)
TOKEN_EVENTS = b"".join(
    b'data: {"id":"x","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"' + t + b'"}}]}\n\n'
    for t in (b"Hel", b"lo", b" there")
)
DONE = b"data: [DONE]\n\n"
STREAM_REQUEST = dumps(chat("The quick brown fox jumps over the lazy dog. " * 5, stream=True))


@pytest.fixture
async def grpc_router() -> AsyncIterator[RouterServer]:
    cfg = load_config(
        env={},
        overrides={
            "server": {"listen": "127.0.0.1:0", "max_response_buffer_bytes": 4096},
            "calibration": {"state_file": ""},
        },
    )
    server = RouterServer(RouterRuntime.from_config(cfg))
    await server.start()
    yield server
    await server.stop(1.0)


async def play_stream(server: RouterServer, chunks: list[bytes]) -> bytes:
    """One streaming exchange as Envoy runs it; returns the bytes the client would receive."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        call = epg.ExternalProcessorStub(channel).Process()
        await call.write(request_headers())
        await call.read()
        await call.write(request_body(STREAM_REQUEST))
        await call.read()
        await call.write(response_headers(content_type="text/event-stream"))
        assert (await call.read()).mode_override.response_body_mode == 1  # STREAMED
        out = []
        for i, chunk in enumerate(chunks):
            await call.write(response_body(chunk, eos=i == len(chunks) - 1))
            common = (await asyncio.wait_for(call.read(), 5.0)).response_body.response
            out.append(common.body_mutation.body if common.HasField("body_mutation") else chunk)
        await call.done_writing()
        assert await call.code() == grpc.StatusCode.OK
    return b"".join(out)


def learned(server: RouterServer) -> int:
    return server.rt.router.calibrator.state("prose").samples


SSE_CASES: dict[str, tuple[list[bytes], bytes, int]] = {
    # id: (chunks Envoy hands over, what the client must receive, prompt tokens learned (0 = none))
    "sse_split_every_byte": (
        [bytes([b]) for b in TOKEN_EVENTS + USAGE_EVENT + DONE], TOKEN_EVENTS + DONE, 57),
    "sse_crlf": (
        [(TOKEN_EVENTS + USAGE_EVENT + DONE).replace(b"\n", b"\r\n")],
        (TOKEN_EVENTS + DONE).replace(b"\n", b"\r\n"), 57),
    "sse_comments_keepalives": (
        [b": keep-alive\n\n" + TOKEN_EVENTS[:40], TOKEN_EVENTS[40:] + b":\n\n" + USAGE_EVENT[:20],
         USAGE_EVENT[20:] + b": ping\n\n" + DONE],
        b": keep-alive\n\n" + TOKEN_EVENTS + b":\n\n" + b": ping\n\n" + DONE, 57),
    "sse_usage_missing": ([TOKEN_EVENTS, DONE], TOKEN_EVENTS + DONE, 0),
    "sse_invalid_json_data": (
        [TOKEN_EVENTS + b'data: {"usage": {"prompt_tokens": 9\n\n' + USAGE_EVENT + DONE],
        TOKEN_EVENTS + b'data: {"usage": {"prompt_tokens": 9\n\n' + DONE, 57),
    "sse_unterminated_usage_at_eof": ([TOKEN_EVENTS, USAGE_EVENT[:-2]], TOKEN_EVENTS, 57),
    "sse_event_over_buffer": (
        [TOKEN_EVENTS + b'data: {"pad":"' + b"x" * 5000, b'"}\n\n' + USAGE_EVENT + DONE],
        TOKEN_EVENTS + b'data: {"pad":"' + b"x" * 5000 + b'"}\n\n' + USAGE_EVENT + DONE, 0),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(SSE_CASES))
async def test_sse_row(grpc_router: RouterServer, case: str) -> None:
    chunks, client_gets, prompt_tokens = SSE_CASES[case]
    assert await play_stream(grpc_router, chunks) == client_gets
    assert learned(grpc_router) == (1 if prompt_tokens else 0)
    await until_async(  # the server's stream handler closes just after the client's stream ends
        lambda: (grpc_router.rt.router.pressure.in_flight, grpc_router.processor.active),
        "the server to close the stream",
        ok=lambda seen: seen == ({"short": 0, "long": 0}, 0),
    )


async def test_sse_mixed_line_endings(grpc_router: RouterServer) -> None:
    """SSE allows any of CRLF, LF, CR per line: an event closed by "\\n\\r\\n" is its own event and
    survives the removal of the usage-only chunk after it."""
    last_token = b'data: {"choices":[{"index":0,"delta":{"content":"!"}}]}\n\r\n'
    client_gets = await play_stream(grpc_router, [TOKEN_EVENTS + last_token + USAGE_EVENT + DONE])
    assert client_gets == TOKEN_EVENTS + last_token + DONE


async def test_sse_extra_blank_line(grpc_router: RouterServer) -> None:
    """Blank lines between events are legal SSE and carry no event: every line ending passes through."""
    stream = TOKEN_EVENTS + b"\n" + USAGE_EVENT + DONE
    assert await play_stream(grpc_router, [stream]) == TOKEN_EVENTS + b"\n" + DONE


# -- the table in the docs ------------------------------------------------------------------------------
SPECIAL_ROWS = {  # doc id -> the test above that covers it
    "upstream_503": test_upstream_503,
    "upstream_400_flat": test_a_short_pool_400_is_retried_long_and_a_400_from_both_reaches_the_client,
    "client_disconnect": test_client_disconnects_mid_stream,
    "stream_options_null": test_null_stream_options_still_learns,
    "sse_mixed_line_endings": test_sse_mixed_line_endings,
    "sse_extra_blank_line": test_sse_extra_blank_line,
}


def test_docs_table_has_exactly_one_row_per_test() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "bad-input.md").read_text()
    documented = re.findall(r"^\| `([a-z0-9_]+)` \|", doc, flags=re.MULTILINE)
    tested = [r.id for r in ROWS] + sorted(SSE_CASES) + sorted(VLLM_PARITY) + sorted(SPECIAL_ROWS)
    assert sorted(documented) == sorted(tested)
    assert len(documented) >= 30


# -- after the whole table ------------------------------------------------------------------------------
async def test_router_still_routes_after_the_table(observed: ObservedStack, session: aiohttp.ClientSession) -> None:
    """Runs last in this module: nothing above crashed, hung or wedged the router."""
    assert observed.stack.routers[0].alive
    await check_row(observed, session, Row("after_table_short", VALID, 200, "completion", "short", "threshold"))
    await check_row(
        observed, session, Row("after_table_long", dumps(chat(max_tokens=9_000)), 200, "completion", "long", "capacity")
    )
    log = observed.router_log
    assert "Traceback" not in log and "router error" not in log
