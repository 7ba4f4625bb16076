"""``POST /v1/responses`` through the real Envoy: routed by its budget, learned from, bytes untouched;
and what a request without an output limit gets under each ``routing.no_output_limit`` policy."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from extproc.stack.stack import Stack
from extproc.workload.prompts import prompt_text
from tests.conftest import start_stack
from tests.e2e.client import MODEL, post, samples, wait_samples

pytestmark = pytest.mark.e2e
PATH = "/v1/responses"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory, "responses") as s:
        yield s


@pytest.fixture(scope="module")
def long_policy_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory, "no-limit-long", router_flags=("--routing-no-output-limit", "long")) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def responses_body(category: str, tokens: int, seed: int = 0, **options: Any) -> dict[str, Any]:
    return {"model": MODEL, "instructions": "Answer briefly.", "input": prompt_text(category, tokens, seed), **options}


def sse_events(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line[5:]) for line in raw.splitlines() if line.startswith(b"data:")]


async def test_responses_are_routed_by_prompt_and_max_output_tokens(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    short = await post(session, stack.url, responses_body("prose", 1_000, max_output_tokens=16), path=PATH)
    pushed = await post(session, stack.url, responses_body("prose", 1_000, max_output_tokens=7_800), path=PATH)
    big = await post(session, stack.url, responses_body("prose", 12_000, max_output_tokens=16), path=PATH)
    assert (short.status, pushed.status, big.status) == (200, 200, 200), (pushed.body[:300], big.body[:300])
    assert [stack.access_log.pool(r.request_id) for r in (short, pushed, big)] == ["short", "long", "long"]
    assert short.json()["usage"]["output_tokens"] == 16
    # 1,000 + framing + 7,800 > 8,192: the short pool would have cut the output at its context (vLLM 0.32;
    # older vLLM answered a context-length 400).
    assert pushed.json()["usage"]["output_tokens"] == 7_800
    assert big.json()["usage"]["input_tokens"] > 12_000


async def test_responses_json_and_stream_are_learned_from_and_pass_unchanged(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    before = samples(stack, "code")
    plain = responses_body("code", 600, seed=1, max_output_tokens=8)
    streamed = responses_body("code", 700, seed=2, max_output_tokens=8, stream=True)
    via_envoy = [await post(session, stack.url, b, path=PATH) for b in (plain, streamed)]
    assert [r.status for r in via_envoy] == [200, 200]
    assert [stack.access_log.pool(r.request_id) for r in via_envoy] == ["short", "short"]
    direct = [await post(session, stack.pool_url("short"), b, path=PATH) for b in (plain, streamed)]
    assert [r.body for r in via_envoy] == [r.body for r in direct]  # the router never rewrites these
    final = sse_events(via_envoy[1].body)[-1]
    assert final["type"] == "response.completed" and final["response"]["usage"]["output_tokens"] == 8
    assert wait_samples(stack, "code", before + 2) >= before + 2  # one from the JSON body, one from the event


async def test_no_output_limit_reserve_goes_short_and_runs_to_the_short_context(
    stack: Stack, session: aiohttp.ClientSession
) -> None:
    reply = await post(session, stack.url, responses_body("prose", 1_000, seed=3), path=PATH)
    assert reply.status == 200 and stack.access_log.pool(reply.request_id) == "short"
    usage = reply.json()["usage"]
    assert usage["input_tokens"] + usage["output_tokens"] == 8_192  # vLLM's default: the rest of the context
    assert reply.json()["incomplete_details"] == {"reason": "max_output_tokens"}


async def test_no_output_limit_long_sends_such_requests_long(
    long_policy_stack: Stack, session: aiohttp.ClientSession
) -> None:
    stack = long_policy_stack
    unlimited = await post(session, stack.url, responses_body("prose", 1_000, seed=4), path=PATH, timeout_s=120)
    limited = await post(session, stack.url, responses_body("prose", 1_000, max_output_tokens=16), path=PATH)
    assert (unlimited.status, limited.status) == (200, 200)
    assert stack.access_log.pool(unlimited.request_id) == "long"
    assert stack.access_log.pool(limited.request_id) == "short"
    usage = unlimited.json()["usage"]
    assert usage["input_tokens"] + usage["output_tokens"] == 65_536  # the long pool's whole context
