"""A forced truncation through real vLLM 0.32: the router is made to under-estimate (the ratio
estimator with a cold start of 8 bytes/token where this model's prose tokenises near 4), so a chat of
~1,500 prompt tokens with ``max_tokens`` 700 is sent to the short engine (2048), which serves it with
the output cut at its context (200, ``finish_reason: length``). Envoy's net cannot see that; the router
must count it, learn the prompt's exact size from the answer's usage, and send the same request long
the next time, where it is served in full.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from benchmarks.vllm_accuracy import TRUNCATIONS, counter, post, run_stack
from extproc.stack.router_view import read_decisions
from extproc.stack.stack import Stack, wait_for
from extproc.workload.prompts import prompt_text
from tests.vllm.engine_client import EngineClient

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

UNDER_ESTIMATES = (
    "--estimator-kind", "ratio", "--calibration-cold-start", "8",
    "--calibration-converged-samples", "0", "--calibration-converged-sample-rate", "0",
)  # fmt: skip
PROMPT, MAX_TOKENS = 1_500, 700


def _decision(stack: Stack, rid: str) -> dict[str, Any]:
    logs = [r.log_path for r in stack.routers]
    wait_for(lambda: rid in read_decisions(logs), 20.0, "the router's decision line")
    return read_decisions(logs)[rid]


@pytest.mark.timeout(240)
def test_a_forced_truncation_by_real_vllm_is_counted_and_learned_from(
    vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory, short_engine: EngineClient
) -> None:
    b_short = vllm_stack.options.short.max_model_len
    text = prompt_text("prose", PROMPT, seed=11)
    prompt = short_engine.chat_count(text)
    assert prompt < b_short < prompt + MAX_TOKENS  # fits alone, not with its output
    body = {"model": vllm_stack.model, "messages": [{"role": "user", "content": text}],
            "max_tokens": MAX_TOKENS, "ignore_eos": True}  # fmt: skip

    async def go(stack: Stack) -> tuple[tuple[str, int, Any], float, tuple[str, int, Any], float]:
        async with aiohttp.ClientSession() as session:
            before = sum((await counter(session, stack, TRUNCATIONS)).values())
            assert before == 0.0
            cut = await post(session, stack.url, body, "cut")
            after_cut = sum((await counter(session, stack, TRUNCATIONS)).values())
            again = await post(session, stack.url, body, "again")
            after_again = sum((await counter(session, stack, TRUNCATIONS)).values())
        return cut, after_cut, again, after_again

    with run_stack(vllm_stack, tmp_path_factory.mktemp("vllm-truncation"), UNDER_ESTIMATES) as stack:
        (rid, status, answer), after_cut, (rid2, status2, answer2), after_again = asyncio.run(go(stack))
        d, d2 = _decision(stack, rid), _decision(stack, rid2)
        served, served2 = stack.access_log.pool(rid), stack.access_log.pool(rid2)
    usage = answer["usage"]
    # What real vLLM 0.32 does to a misrouted request: a 200, the output cut at the context.
    assert (status, served, answer["choices"][0]["finish_reason"]) == (200, "short", "length")
    assert (usage["prompt_tokens"], usage["prompt_tokens"] + usage["completion_tokens"]) == (prompt, b_short)
    assert d["estimated_total_tokens"] <= b_short and d["context_truncated"]  # the miss was forced, and seen
    assert (d["prompt_tokens"], d["observation"]) == (prompt, "accepted")  # its exact size learned
    assert after_cut == 1.0
    # The same request next time: sized from what the engine said, sent long, served in full.
    assert (status2, d2["pool"], served2) == (200, "long", "long")
    assert d2["estimated_total_tokens"] >= prompt + MAX_TOKENS and not d2["context_truncated"]
    assert answer2["usage"]["completion_tokens"] == MAX_TOKENS and after_again == 1.0
