"""The net through the real Envoy: a request the router wrongly sends short is answered by the long
pool, never failed, and the router counts it and learns from it.

Misses are forced with a tiny short pool: the emulated short pool serves a 2,048-token context while
the router believes it has 8,192, so every prompt of 2,500-5,000 tokens is routed short and rejected
there with vLLM's context-length 400. Envoy's net (a retry on the short route, through either the
priority-group cluster specifier or the composite cluster) resends it to the long pool, which serves it.
The prompts themselves exceed the short context, which every vLLM refuses (0.32 included: it cuts the
output of a prompt that fits, and refuses only a prompt alone over the context), so the net is tested
against the emulator's default, today's vLLM.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from extproc.gateway.envoy_config import ATTEMPT_COUNT_HEADER
from extproc.stack.router_view import read_decisions
from extproc.stack.stack import PoolSpec, Stack, wait_for
from tests.conftest import start_stack
from tests.e2e.client import MODEL, body_for, post, sse_payloads

pytestmark = pytest.mark.e2e

REAL_SHORT_CONTEXT = 2048
DECISION_LOG = ("--telemetry-json-logs", "true", "--telemetry-log-decisions", "true")
BELIEVES_8K = ("--routing-short-context", "8192", "--routing-b-short", "8192")


def _net_stack(
    tmp_path_factory: pytest.TempPathFactory, name: str, *flags: str, emulator: tuple[str, ...] = (), **layout: Any
) -> Any:
    return start_stack(
        tmp_path_factory,
        name,
        short=PoolSpec("short", REAL_SHORT_CONTEXT, 16),
        router_flags=(*BELIEVES_8K, *DECISION_LOG, *flags),
        emulator_flags=emulator,
        layout_overrides=layout,
    )


@pytest.fixture(scope="module", params=["priority_group", "composite"])
def net_stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both of Envoy 1.40's mechanisms, each verified end to end."""
    with _net_stack(tmp_path_factory, f"net-{request.param}", short_net=request.param) as stack:
        yield stack


def _request(endpoint: str, tokens: int, stream: bool, seed: int) -> tuple[str, dict[str, Any]]:
    body = body_for("prose", tokens, max_tokens=8, seed=seed, stream=stream)
    if endpoint == "chat":
        return "/v1/chat/completions", body
    prompt = body["messages"][-1]["content"]
    return "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 8, "stream": stream}


def _decisions(stack: Stack, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    logs = [p.log_path for p in stack.routers]
    wait_for(lambda: set(request_ids) <= set(read_decisions(logs)), 10.0, "the router's decision lines")
    return read_decisions(logs)


async def test_no_client_sees_a_context_length_error_and_each_retry_is_counted_and_learned(net_stack: Stack) -> None:
    jobs = [
        (endpoint, tokens, stream, seed)
        for seed, (endpoint, stream) in enumerate([(e, s) for e in ("chat", "completions") for s in (False, True)])
        for tokens in (3_000, 4_500, 300)  # two misses (too big for the real short pool), one fit
    ]
    async with aiohttp.ClientSession() as session:
        replies = await asyncio.gather(
            *(post(session, net_stack.url, body, path=path) for path, body in (_request(*job) for job in jobs))
        )
    assert [r.body for r in replies if r.status != 200] == []  # no client sees a context-length error
    decisions = _decisions(net_stack, [r.request_id for r in replies])
    for (_, tokens, stream, _), reply in zip(jobs, replies, strict=True):
        log = net_stack.access_log.entry(reply.request_id)
        decision = decisions[reply.request_id]
        assert decision["pool"] == "short" and log["routed"] == "short"  # the router's choice, both sides
        missed = tokens > REAL_SHORT_CONTEXT
        assert log["attempts"] == (2 if missed else 1), log
        assert net_stack.access_log.pool_of(reply.request_id) == ("long" if missed else "short")  # who served it
        assert (decision["attempts"], decision["served_pool"]) == ((2, "long") if missed else (1, "short"))
        assert ATTEMPT_COUNT_HEADER not in reply.headers  # for the router only
        # Learned from the long pool's usage: the exact size of the prompt the estimate misplaced.
        assert decision["usage_source"] == ("sse" if stream else "json"), decision
        assert decision["prompt_tokens"] >= tokens
        if stream:
            assert sse_payloads(reply.body)[-1] == b"[DONE]"


async def test_a_request_invalid_for_another_reason_gets_the_long_pools_own_400(net_stack: Stack) -> None:
    body = {**body_for("prose", 100, max_tokens=8), "n": "two"}  # rejected by every vLLM, whatever the pool
    async with aiohttp.ClientSession() as session:
        via_net = await post(session, net_stack.url, body)
        direct = await post(session, net_stack.pool_url("long"), body)
    assert via_net.status == direct.status == 400
    assert via_net.body == direct.body  # unchanged: the long pool's own answer
    assert net_stack.access_log.entry(via_net.request_id)["attempts"] == 2
    decision = _decisions(net_stack, [via_net.request_id])[via_net.request_id]
    assert (decision["attempts"], decision["status"], decision["served_pool"]) == (2, 400, "long")


async def test_a_short_pool_that_refuses_connections_is_covered_too(net_stack: Stack) -> None:
    net_stack.pools["short"].kill()  # before Envoy's health check notices: connection refused
    async with aiohttp.ClientSession() as session:
        replies = [
            await post(session, net_stack.url, body_for("prose", 200, max_tokens=8, seed=90 + i)) for i in range(5)
        ]
    assert [r.status for r in replies] == [200] * 5
    assert {net_stack.access_log.pool(r.request_id) for r in replies} == {"long"}


@pytest.fixture(scope="module", params=["v0.32", "v0.11"])
def converged_without_net(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, str]]:
    """No net (the short pool's 400 reaches the router), and every category converged after one sample
    with no sampling after that: only the always-read error path can learn. The pools speak vLLM 0.32
    (a lower bound: "at least L+1 input tokens") or 0.11 (the exact count)."""
    flags = ("--calibration-converged-samples", "1", "--calibration-converged-sample-rate", "0")
    style = ("--vllm-behaviour", request.param)
    with _net_stack(tmp_path_factory, f"converged-{request.param}", *flags, emulator=style, short_net="off") as stack:
        yield stack, request.param


async def test_a_short_pool_400_is_learned_from_when_the_category_has_converged(
    converged_without_net: tuple[Stack, str],
) -> None:
    stack, context_style = converged_without_net
    async with aiohttp.ClientSession() as session:
        first = await post(session, stack.url, body_for("prose", 300, max_tokens=8, seed=1))  # the one sample
        fits = await post(session, stack.url, body_for("prose", 400, max_tokens=8, seed=2))  # not sampled
        miss = await post(session, stack.url, body_for("prose", 3_000, max_tokens=8, seed=3))
    assert (first.status, fits.status, miss.status) == (200, 200, 400)  # no net: the client gets the 400
    decisions = _decisions(stack, [first.request_id, fits.request_id, miss.request_id])
    assert decisions[first.request_id]["usage_source"] == "json"
    assert decisions[fits.request_id]["usage_source"] == "" and decisions[fits.request_id]["status"] == 200
    learned = decisions[miss.request_id]
    assert (learned["pool"], learned["status"], learned["observation"]) == ("short", 400, "accepted")
    if context_style == "v0.32":
        # vLLM 0.32 stops tokenizing one past the context and says "at least": a lower bound, which
        # may widen the margin but never narrow it.
        assert learned["usage_source"] == "overflow_400_bound"
        assert learned["prompt_tokens"] == REAL_SHORT_CONTEXT + 1
    else:
        assert learned["usage_source"] == "overflow_400" and learned["prompt_tokens"] >= 3_000  # exact
