"""The router learns from what real vLLM reports: ``usage`` of a chat, of a stream whose usage the
router asked for itself (and hid again from a client that did not), of a completions batch, and of a
Responses call. Every count is checked against the engine's own ``/tokenize``."""

from __future__ import annotations

import aiohttp
import pytest

from extproc.stack.stack import Stack
from extproc.workload.prompts import prompt_text
from tests.e2e.client import calibration, is_usage_only, post, sse_payloads
from tests.vllm.engine_client import EngineClient, decisions
from tests.waiting import until

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]


def _samples(stack: Stack) -> int:
    return sum(int(c.get("samples", 0)) for c in calibration(stack).values())


def _learned_more(stack: Stack, before: int) -> int:
    return until(lambda: _samples(stack), "the router's saved calibration to grow", ok=lambda n: n > before,
                 timeout_s=30.0, interval_s=0.2)  # fmt: skip


async def test_chat_usage_is_the_engines_count_and_is_learned(vllm_stack: Stack, short_engine: EngineClient) -> None:
    text = prompt_text("prose", 300, seed=11)
    before = _samples(vllm_stack)
    body = {"model": vllm_stack.model, "messages": [{"role": "user", "content": text}], "max_tokens": 8,
            "ignore_eos": True}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        reply = await post(session, vllm_stack.url, body)
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] == short_engine.chat_count(text)
    assert usage["completion_tokens"] == 8
    decision = decisions(vllm_stack, [reply.request_id])[reply.request_id]
    assert (decision["pool"], decision["served_pool"], decision["usage_source"]) == ("short", "short", "json")
    assert decision["prompt_tokens"] == usage["prompt_tokens"]
    _learned_more(vllm_stack, before)


async def test_stream_usage_is_injected_learned_and_hidden_from_the_client(
    vllm_stack: Stack, short_engine: EngineClient
) -> None:
    text = prompt_text("code", 400, seed=12)
    before = _samples(vllm_stack)
    body = {"model": vllm_stack.model, "messages": [{"role": "user", "content": text}], "max_tokens": 12,
            "ignore_eos": True, "stream": True}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        reply = await post(session, vllm_stack.url, body)
    assert reply.status == 200
    payloads = sse_payloads(reply.body)
    assert payloads[-1] == b"[DONE]"
    assert not any(is_usage_only(p) for p in payloads), "the client did not ask for usage and must not get it"
    decision = decisions(vllm_stack, [reply.request_id])[reply.request_id]
    assert decision["include_usage_injected"] is True and decision["usage_source"] == "sse"
    assert decision["prompt_tokens"] == short_engine.chat_count(text)
    assert decision["completion_tokens"] == 12
    _learned_more(vllm_stack, before)


async def test_a_stream_that_asked_for_usage_keeps_it(vllm_stack: Stack, short_engine: EngineClient) -> None:
    text = prompt_text("prose", 120, seed=13)
    body = {"model": vllm_stack.model, "messages": [{"role": "user", "content": text}], "max_tokens": 4,
            "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    async with aiohttp.ClientSession() as session:
        reply = await post(session, vllm_stack.url, body)
    usage_chunks = [p for p in sse_payloads(reply.body) if is_usage_only(p)]
    assert len(usage_chunks) == 1 and b'"prompt_tokens":%d' % short_engine.chat_count(text) in usage_chunks[0]


async def test_completions_batch_usage_is_the_sum_of_its_prompts(
    vllm_stack: Stack, short_engine: EngineClient
) -> None:
    prompts = [prompt_text(c, n, seed=14) for c, n in (("prose", 200), ("code", 150), ("cjk", 100))]
    before = _samples(vllm_stack)
    body = {"model": vllm_stack.model, "prompt": prompts, "max_tokens": 4, "ignore_eos": True}
    async with aiohttp.ClientSession() as session:
        reply = await post(session, vllm_stack.url, body, path="/v1/completions")
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    assert usage["prompt_tokens"] == sum(short_engine.prompt_count(p) for p in prompts)  # one combined usage
    assert usage["completion_tokens"] == 4 * len(prompts)
    decision = decisions(vllm_stack, [reply.request_id])[reply.request_id]
    assert decision["prompt_tokens"] == usage["prompt_tokens"] and decision["usage_source"] == "json"
    _learned_more(vllm_stack, before)


async def test_responses_input_tokens_are_learned(vllm_stack: Stack, short_engine: EngineClient) -> None:
    text = prompt_text("prose", 250, seed=15)
    before = _samples(vllm_stack)
    body = {"model": vllm_stack.model, "input": text, "max_output_tokens": 6}
    async with aiohttp.ClientSession() as session:
        reply = await post(session, vllm_stack.url, body, path="/v1/responses")
    assert reply.status == 200, reply.body[:300]
    usage = reply.json()["usage"]
    # vLLM's Responses counts differ from chat's by its own framing; both are within a few tokens.
    assert abs(usage["input_tokens"] - short_engine.chat_count(text)) <= 4, usage
    decision = decisions(vllm_stack, [reply.request_id])[reply.request_id]
    assert decision["prompt_tokens"] == usage["input_tokens"], decision
    _learned_more(vllm_stack, before)
