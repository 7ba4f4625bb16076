"""Near-boundary requests of real text through Envoy + router + two real vLLM engines (short 2048), the
engines' own answers as the truth: what ``benchmarks/vllm_accuracy.py`` measures over many seeds, run
here once, small, as the promise's check.

A fresh router per estimator is warmed on real text of four kinds (corpus prose, code, CJK, mixed:
answers' ``usage`` learned from), then sent held-out chats whose true total (the short engine's
``/tokenize`` count + ``max_tokens``, sent with ``ignore_eos``) lies within +-20 % of 2048. Asserted
where the product promises: no client error with either estimator, every answer whole unless the short
pool cut it (and then the router counted the cut), and with engine counts (the router asks the short
engine's ``/tokenize`` for band requests) no cut at all. The waste (fitting requests sent long) is a
trade the margin makes: printed, and held to its targets by the benchmark, not here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from benchmarks.vllm_accuracy import (
    Plan,
    Score,
    Seeded,
    corpus_halves,
    engine_count_flags,
    measure,
    plan_requests,
    run_stack,
    warmup_bodies,
)
from extproc.stack.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.vllm]

N, SEED = 32, 0
# The CI machine is small and shared: a count that takes longer than the router's 20 ms default would be
# routed by the estimate (a fallback, counted), which is what the deadline is for but not what this
# test checks. The deadline's own behaviour is the unit tests' and the latency benchmark's.
DEADLINE_S = 1.0


@pytest.fixture(scope="module")
def plans(vllm_stack: Stack) -> list[Plan]:
    async def make() -> list[Plan]:
        async with aiohttp.ClientSession() as session:
            return await plan_requests(
                session, vllm_stack.pool_url("short"), vllm_stack.model, corpus_halves()[1], N,
                vllm_stack.options.short.max_model_len, SEED,
            )  # fmt: skip

    out = asyncio.run(make())
    b_short = vllm_stack.options.short.max_model_len
    assert len(out) == N and all(abs(p.total - b_short) <= 0.2 * b_short for p in out)
    assert 0 < sum(p.total <= b_short for p in out) < N  # both sides of the boundary are tried
    return out


def _run(
    vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory, plans: list[Plan], flags: tuple[str, ...]
) -> Score:
    warm = warmup_bodies(vllm_stack.model, corpus_halves()[0], Seeded(SEED))
    with run_stack(vllm_stack, tmp_path_factory.mktemp("near-boundary"), flags) as stack:
        return asyncio.run(measure(stack, warm, plans))


def _say(say: Callable[[str], None], name: str, s: Score) -> None:
    say(f"near-boundary {name}: n={s.n} fits={s.fits} truncated={s.truncated} rejected={s.rejected} "
        f"wasteful={s.wasteful} ({s.pct('wasteful_of_fits'):.1f} % of fits, by kind {dict(s.by_kind)}) "
        f"spilled={s.spilled} engine counts {s.engine_counts}")  # fmt: skip


@pytest.mark.timeout(300)
def test_tokenizer_free_near_the_boundary_never_fails_and_every_cut_is_counted(
    vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory, plans: list[Plan], vllm_say: Any
) -> None:
    s = _run(vllm_stack, tmp_path_factory, plans, ())
    _say(vllm_say, "tokenizer-free", s)
    assert (s.errors, s.count_mismatch) == (0, 0)
    assert s.router_truncations == s.truncated  # what the clients lost, the router saw


@pytest.mark.timeout(300)
def test_engine_counts_near_the_boundary_cut_nothing_and_fail_nothing(
    vllm_stack: Stack, tmp_path_factory: pytest.TempPathFactory, plans: list[Plan], vllm_say: Any
) -> None:
    s = _run(vllm_stack, tmp_path_factory, plans, engine_count_flags(DEADLINE_S))
    _say(vllm_say, "engine counts", s)
    assert (s.errors, s.count_mismatch, s.truncated, s.router_truncations) == (0, 0, 0, 0.0)
    counted = sum(v for series, v in s.engine_counts.items() if 'outcome="counted"' in series)
    assert counted > 0  # the band's counts did come from the engine
