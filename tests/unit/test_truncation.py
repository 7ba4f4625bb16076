"""Truncation by the context: the pure rule against an engine model that clamps like vLLM 0.32, and
which answers the router must read to know."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from extproc.algorithm import BudgetRouter, Outcome, shape_from_body
from extproc.algorithm.dispatch import DispatchPolicy
from extproc.algorithm.truncation import NEAR_FACTOR, context_truncated, near_context


def test_vllms_measured_clamp_is_a_truncation():
    # vLLM 0.32, max-model-len 2048: a 2000-token prompt with max_tokens 100 got 48 tokens, "length".
    assert context_truncated(2000, 48, 2048, 100, length_stop=True)
    assert context_truncated(2000, 48, 2048, 100)  # the usage alone says it
    assert not context_truncated(2000, 48, 2048, 48)  # it got what it asked for
    assert not context_truncated(1000, 100, 2048, 100, length_stop=True)  # stopped at its own limit


def test_an_answer_without_a_limit_that_ran_to_the_context_was_cut():
    assert context_truncated(1000, 1048, 2048, None)
    assert not context_truncated(1000, 300, 2048, None)  # the model stopped on its own


def test_a_length_stop_below_the_limit_is_a_cut_where_the_routers_context_is_wrong():
    # The router believes 8192 but the engine serves 2048: only the finish reason says it.
    assert context_truncated(2000, 48, 8192, 100, length_stop=True)
    assert not context_truncated(2000, 48, 8192, 100)


def test_n_completions_each_get_the_full_limit():
    # One 1500-token prompt, n = 3, max_tokens 1000 on 2048: each choice may reach 548 at most.
    assert context_truncated(1500, 3 * 548, 2048, 1000, sequences=3)  # all three cut
    assert context_truncated(1500, 548 + 10, 2048, 1000, sequences=3, length_stop=True)  # one cut
    assert not context_truncated(1500, 548 + 10, 2048, 1000, sequences=3)  # no finish reason: unknown
    assert not context_truncated(1000, 3 * 1000, 2048, 1000, sequences=3)  # fitted: 1000 + 1000 <= 2048
    assert not context_truncated(1000, 3 * 1048, 2048, 1000, sequences=3, length_stop=True)


def test_a_batch_is_judged_by_its_longest_prompt():
    assert context_truncated(2100, 60, 2048, 100, sequences=2, longest_prompt=2000, length_stop=True)
    assert not context_truncated(1100, 60, 2048, 100, sequences=2, longest_prompt=1000, length_stop=True)


@st.composite
def engine_answers(draw: st.DrawFn) -> tuple[int, int, int | None, int, int, bool, list[bool]]:
    """One prompt with ``n`` sequences served by an engine that clamps every sequence to the room the
    context leaves (vLLM 0.32): each stops early on EOS (strictly before its cap) or at its cap."""
    context = draw(st.integers(16, 20_000))
    prompt = draw(st.integers(1, context - 1))
    limit = draw(st.one_of(st.none(), st.integers(1, 2 * context)))
    n = draw(st.integers(1, 4))
    room = context - prompt
    cap = room if limit is None else min(limit, room)
    made, cut, length = 0, [], False
    for _ in range(n):
        eos = draw(st.one_of(st.none(), st.integers(0, cap - 1))) if cap > 0 else None
        tokens = cap if eos is None else eos
        made += tokens
        length = length or eos is None
        cut.append(eos is None and (limit is None or room < limit))
    return prompt, made, limit, context, n, length, cut


@given(engine_answers())
def test_with_finish_reasons_the_rule_is_exact(answer):
    prompt, made, limit, context, n, length, cut = answer
    assert context_truncated(prompt, made, context, limit, sequences=n, length_stop=length) == any(cut)


@given(engine_answers())
def test_from_usage_alone_it_never_counts_an_uncut_answer_and_sees_every_fully_cut_one(answer):
    prompt, made, limit, context, n, _, cut = answer
    verdict = context_truncated(prompt, made, context, limit, sequences=n)
    assert not verdict or any(cut)
    if n == 1 or all(cut):
        assert verdict == any(cut)


@given(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(1, 10**6))
def test_near_means_twice_the_estimate_would_not_fit(prompt, reserve, context):
    assert near_context(prompt, reserve, context) == (prompt * NEAR_FACTOR + reserve > context)


def _router(rate: float = 0.0) -> BudgetRouter:
    from extproc.algorithm import CalibrationParams
    from extproc.algorithm.linear_estimator import EstimatorParams

    router = BudgetRouter(
        policy=DispatchPolicy(b_short=2048, short_context=2048, long_context=16384),
        calibration=CalibrationParams(converged_samples=1, converged_sample_rate=rate),
        estimator=EstimatorParams(kind="ratio"),  # a converged ratio: estimates these tests can foresee
    )
    router.calibrator.load({"prose": {"mean": 4.0, "dev": 0.05, "samples": 500}})
    return router


def _chat(tokens: int, max_tokens: int | None, **kw: object) -> dict[str, object]:
    limit = {} if max_tokens is None else {"max_tokens": max_tokens}
    return {"model": "m", "messages": [{"role": "user", "content": "word " * (tokens * 4 // 5)}], **limit, **kw}


def test_a_short_answer_near_the_boundary_is_read_although_sampling_skips_it():
    router = _router(rate=0.0)
    near = router.route(router.shape("chat", _chat(1000, 200)))  # 2 x 1000 + 200 > 2048
    far = router.route(router.shape("chat", _chat(100, 50)))
    assert (near.decision.pool, near.must_read, near.observe) == ("short", True, True)
    assert (far.decision.pool, far.must_read, far.observe) == ("short", False, False)
    long = router.route(router.shape("chat", _chat(1900, 500)))
    assert long.decision.pool == "long" and not long.must_read
    ids = router.route(router.shape("completions", {"prompt": [1] * 1000, "max_tokens": 100}))
    assert not ids.must_read  # an exact count needs no look


def test_the_router_judges_the_answer_of_the_pool_that_served_it():
    router = _router()
    ticket = router.route(router.shape("chat", _chat(1400, 300)))
    assert ticket.decision.pool == "short"
    assert router.truncated(ticket, Outcome(1900, 148, 200))  # 1900 + 148 = 2048 < 1900 + 300
    assert not router.truncated(ticket, Outcome(1900, 100, 200))
    assert not router.truncated(ticket, Outcome(1900, None, 200))
    assert not router.truncated(ticket, Outcome(2049, None, 400, lower_bound=True))
    moved = router.moved(ticket, "long")  # the net's retry: the long pool's context
    assert not router.truncated(moved, Outcome(1900, 148, 200))
    router.finish(moved)


def test_completions_without_max_tokens_are_judged_by_vllms_default_of_16():
    router = _router()
    ticket = router.route(shape_from_body("completions", {"prompt": "word " * 1600}, router.categorizer))
    assert ticket.decision.pool == "short" and ticket.estimate is not None and ticket.estimate.output_tokens == 16
    assert router.truncated(ticket, Outcome(2040, 8, 200))  # 8 < 16 and the context is full
    assert not router.truncated(ticket, Outcome(2000, 16, 200))
