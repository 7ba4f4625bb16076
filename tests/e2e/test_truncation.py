"""Truncation by the short context through the real Envoy, against emulated pools that clamp like
vLLM 0.32: a request whose prompt fits the short context but whose prompt + ``max_tokens`` does not
is served (200) with its output cut at the context. Envoy's net cannot see that, so the router must.

The router is made to under-estimate on purpose (a forced truncation): the ratio estimator's cold
start is 8 bytes/token where prose tokenises at ~4.3, so a ~1,500-token prompt is estimated near 800
and sent short with a limit it cannot get there. Nothing is sampled (every category counts as
converged, sample rate 0): only the answers the router must read (near the short context) are read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from extproc.stack.probes import free_port
from extproc.stack.router_view import read_decisions
from extproc.stack.stack import PoolSpec, Stack, wait_for
from tests.conftest import start_stack
from tests.e2e.client import MODEL, Reply, body_for, is_usage_only, post, sse_payloads

pytestmark = pytest.mark.e2e

SHORT_CONTEXT = 2048
UNDER_ESTIMATES = (
    "--routing-b-short", str(SHORT_CONTEXT),
    "--estimator-kind", "ratio", "--calibration-cold-start", "8",
    "--calibration-converged-samples", "0", "--calibration-converged-sample-rate", "0",
    "--telemetry-json-logs", "true", "--telemetry-log-decisions", "true",
)  # fmt: skip


@pytest.fixture
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh router per test: each one starts from the same (wrong) cold start."""
    with start_stack(
        tmp_path_factory,
        "truncation",
        short=PoolSpec("short", SHORT_CONTEXT, 16),
        router_flags=UNDER_ESTIMATES,
        metrics_port=free_port(),
    ) as s:
        yield s


def decision(stack: Stack, request_id: str) -> dict[str, Any]:
    logs = [p.log_path for p in stack.routers]
    wait_for(lambda: request_id in read_decisions(logs), 10.0, "the router's decision line")
    return read_decisions(logs)[request_id]


async def _truncations_now(session: aiohttp.ClientSession, stack: Stack, pool: str) -> float:
    async with session.get(stack.metrics_urls()[0]) as resp:
        page = await resp.text()
    for line in page.splitlines():
        name, _, value = line.rpartition(" ")
        series = name.startswith("budget_router_context_truncations_total{") and 'category="prose"' in name
        if series and f'pool="{pool}"' in name:
            return float(value)
    return 0.0


async def truncations(
    session: aiohttp.ClientSession, stack: Stack, after: Reply | None = None, pool: str = "short"
) -> float:
    """``budget_router_context_truncations_total{pool,category="prose"}`` from the router's Prometheus page,
    read once the exchange ``after`` ended on the router (the client may hold its answer before the router's
    finish hook ran; its decision line is written in the same finish as the counter)."""
    if after is not None:
        await asyncio.to_thread(decision, stack, after.request_id)
    return await _truncations_now(session, stack, pool)


async def test_a_forced_truncation_is_counted_and_learned_from(stack: Stack) -> None:
    body = body_for("prose", 1_500, max_tokens=700, seed=1)
    async with aiohttp.ClientSession() as session:
        assert await truncations(session, stack) == 0.0  # the series exists from the start
        cut = await post(session, stack.url, body)
        answer = cut.json()
        usage = answer["usage"]
        # What vLLM 0.32 does, and what the client gets: a 200 with a shorter answer than it asked for.
        assert cut.status == 200 and answer["choices"][0]["finish_reason"] == "length"
        assert usage["prompt_tokens"] + usage["completion_tokens"] == SHORT_CONTEXT and usage["completion_tokens"] < 700
        d = decision(stack, cut.request_id)
        assert (d["pool"], d["must_read"], d["context_truncated"], d["usage_source"]) == ("short", True, True, "json")
        assert d["estimated_total_tokens"] <= SHORT_CONTEXT < usage["prompt_tokens"] + 700  # the miss was forced
        assert (d["prompt_tokens"], d["observation"]) == (usage["prompt_tokens"], "accepted")  # learned exactly
        assert await truncations(session, stack, after=cut) == 1.0
        again = await post(session, stack.url, body)  # the same request after learning its real size
    d2 = decision(stack, again.request_id)
    assert d2["pool"] == "long" and d2["estimated_total_tokens"] > SHORT_CONTEXT
    assert again.json()["usage"]["completion_tokens"] == 700 and not d2["context_truncated"]


async def test_a_cut_stream_is_detected_and_the_client_stream_is_unchanged(stack: Stack) -> None:
    body = body_for("prose", 1_500, max_tokens=700, seed=2, stream=True)  # no usage asked for
    async with aiohttp.ClientSession() as session:
        reply = await post(session, stack.url, body)
        count = await truncations(session, stack, after=reply)
    payloads = sse_payloads(reply.body)
    assert reply.status == 200 and payloads[-1] == b"[DONE]"
    assert not any(is_usage_only(p) for p in payloads)  # the injected usage chunk was stripped again
    assert any(b'"finish_reason":"length"' in p for p in payloads)
    d = decision(stack, reply.request_id)
    assert (d["include_usage_injected"], d["usage_source"], d["context_truncated"]) == (True, "sse", True)
    assert count == 1.0


@pytest.mark.parametrize("api", ["completions", "responses"])
async def test_completions_and_responses_cuts_are_counted_too(stack: Stack, api: str) -> None:
    prompt = body_for("prose", 1_500, seed=3)["messages"][0]["content"]
    if api == "completions":
        path, body = "/v1/completions", {"model": MODEL, "prompt": prompt, "max_tokens": 700}
    else:
        path, body = "/v1/responses", {"model": MODEL, "input": prompt, "max_output_tokens": 700}
    async with aiohttp.ClientSession() as session:
        reply = await post(session, stack.url, body, path=path)
        count = await truncations(session, stack, after=reply)
    answer = reply.json()
    if api == "responses":
        assert answer["status"] == "incomplete"
    else:
        assert answer["choices"][0]["finish_reason"] == "length"
    d = decision(stack, reply.request_id)
    assert (d["endpoint"], d["pool"], d["context_truncated"]) == (api, "short", True)
    assert count == 1.0


async def test_far_answers_are_not_read_once_converged_but_near_ones_are(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        far = await post(session, stack.url, body_for("prose", 100, max_tokens=20, seed=4))
        near = await post(session, stack.url, body_for("prose", 1_500, max_tokens=500, seed=5))  # fits: 2000
        count = await truncations(session, stack, after=near)
    d_far, d_near = decision(stack, far.request_id), decision(stack, near.request_id)
    assert (d_far["pool"], d_far["must_read"], d_far["usage_source"]) == ("short", False, "")  # status only
    assert (d_near["pool"], d_near["must_read"], d_near["usage_source"]) == ("short", True, "json")
    assert not d_near["context_truncated"] and near.json()["usage"]["completion_tokens"] == 500
    assert count == 0.0


async def test_a_prompt_over_the_context_is_retried_by_the_net_not_cut(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        reply = await post(session, stack.url, body_for("prose", 2_600, max_tokens=50, seed=6))
        count = await truncations(session, stack, after=reply)
    d = decision(stack, reply.request_id)
    # vLLM 0.32 refuses a prompt alone over the context (400, "at least 2049"): Envoy's net resends it
    # to the long pool, which serves it in full; nothing was cut.
    assert reply.status == 200 and reply.json()["usage"]["completion_tokens"] == 50
    assert (d["pool"], d["attempts"], d["served_pool"], d["context_truncated"]) == ("short", 2, "long", False)
    assert count == 0.0


async def test_n_completions_cut_at_the_context_are_one_truncation(stack: Stack) -> None:
    body = {**body_for("prose", 1_500, max_tokens=700, seed=7), "n": 2}  # each choice may have 700
    async with aiohttp.ClientSession() as session:
        reply = await post(session, stack.url, body)
        count = await truncations(session, stack, after=reply)
    answer = reply.json()
    assert [c["finish_reason"] for c in answer["choices"]] == ["length", "length"]
    d = decision(stack, reply.request_id)
    assert (d["pool"], d["context_truncated"]) == ("short", True) and count == 1.0
