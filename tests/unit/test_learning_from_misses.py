"""What the router learns from the counts engines give back for the requests it misplaced.

The exact count of a request the net resent (or of an answer the short context cut) is the best
sample there is: it is never an outlier, it is remembered for that prompt, and only the hard
bytes/token bounds still apply to it. Odd text (random identifiers, base64, hex, digit runs) has its
own category, and a 400's "at least N input tokens" is a floor for that prompt only: neither moves
ordinary prose's routing.
"""

from __future__ import annotations

import base64
import random
import string
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.algorithm import BudgetRouter, CalibrationParams, DispatchPolicy, Outcome, RequestShape
from extproc.algorithm.calibration import Observation
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.linear_estimator import FAR_WEIGHT, Bucket, EstimatorParams, LinearEstimator
from extproc.algorithm.prompt_memory import PromptMemory

CORPUS = Path(__file__).resolve().parents[2] / "extproc" / "data" / "corpus"
PROSE = (CORPUS / "prose" / "licence-GPL-3.txt").read_text() + (CORPUS / "prose" / "licence-GPL-2.txt").read_text()
B_SHORT = 2048
PROSE_RATIO = 4.5  # bytes/token of the prose "engine" below
FRAMING = 9  # template tokens per message


def _body(text: str, max_tokens: int) -> dict[str, object]:
    return {"model": "m", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]}


def _engine_count(shape: RequestShape, ratio: float = PROSE_RATIO) -> int:
    return round(shape.text_bytes / ratio) + FRAMING * shape.messages


def warm_router() -> BudgetRouter:
    """A router with B_short = short context = 2048 that learned prose from 80 answers of every size
    (all observed: converged categories are sampled, so the sampling rate is 1 here)."""
    router = BudgetRouter(
        policy=DispatchPolicy(b_short=B_SHORT, short_context=B_SHORT, long_context=65536),
        calibration=CalibrationParams(converged_sample_rate=1.0),
        rng=random.Random(0),
    )
    for i in range(80):
        size = 400 + (i * 1237) % 9000
        start = (i * 7919) % (len(PROSE) - size)
        shape = router.shape("chat", _body(PROSE[start : start + size], 200))
        ticket = router.route(shape)
        router.finish(ticket, Outcome(_engine_count(shape), 10, 200))
    return router


def near_boundary_prose(router: BudgetRouter, n: int = 40) -> list[RequestShape]:
    """Prose requests whose true total lies within ±15 % of B_short."""
    shapes = []
    rng = random.Random(1)
    while len(shapes) < n:
        size = rng.randrange(3000, 8000)
        start = rng.randrange(0, len(PROSE) - size)
        probe = router.shape("chat", _body(PROSE[start : start + size], 16))
        total = round(B_SHORT * rng.uniform(0.85, 1.15))
        out = total - _engine_count(probe)
        if out >= 16:
            shapes.append(router.shape("chat", _body(PROSE[start : start + size], out)))
    return shapes


def odd_prompts(n: int) -> list[str]:
    """Ten kinds of text no prose fit describes, 5-9 KB each."""
    rng = random.Random(2)
    out = []
    for i in range(n):
        size = rng.randrange(5000, 9000)
        kind = i % 4
        if kind == 0:
            blob = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(size))
        elif kind == 1:
            blob = base64.b64encode(rng.randbytes(size * 3 // 4)).decode()
        elif kind == 2:
            blob = rng.randbytes(size // 2).hex()
        else:
            blob = "".join(rng.choice(string.digits) for _ in range(size))
        out.append("Check this value: " + blob)
    return out


def test_a_net_retried_count_is_learned_and_routes_that_prompt_long_next_time():
    router = warm_router()
    # Prose the features under-count: its "engine" packs 2 bytes per token (a tokenizer unlike the fit's).
    shape = router.shape("chat", _body(PROSE[:5000], 64))
    ticket = router.route(shape)
    assert ticket.decision.pool == SHORT  # estimated ~1,100 tokens; really 2,500: over the short context
    engine = _engine_count(shape, ratio=2.0)
    assert engine > B_SHORT
    untrusted = warm_router()
    assert untrusted.learn(shape, engine, untrusted.route(shape).estimate).observation is Observation.OUTLIER
    moved = router.moved(ticket, LONG)  # Envoy's net resent it; the long pool answered with the count
    learned = router.finish(moved, Outcome(engine, 64, 200, trusted=True))
    assert learned is not None and learned.observation is Observation.ACCEPTED
    again = router.route(shape)
    assert again.decision.pool == LONG and again.estimate is not None and again.estimate.prompt_tokens >= engine


def test_trusted_counts_that_agree_move_the_category_and_one_alone_does_not_wreck_it():
    router = warm_router()
    ordinary = near_boundary_prose(router)
    before = [router.decide(s)[0].prompt_tokens for s in ordinary]
    one = router.shape("chat", _body(PROSE[100:5100], 64))
    router.learn(one, _engine_count(one, ratio=2.0), router.decide(one)[0], trusted=True)  # 2.25x the fit
    after = [router.decide(s)[0].prompt_tokens for s in ordinary]
    assert max(abs(a / b - 1.0) for a, b in zip(after, before, strict=True)) < 0.02  # bounded influence
    for i in range(60):  # the engine changed: every prose prompt now packs 3.6 bytes per token
        shape = router.shape("chat", _body(PROSE[i * 150 : i * 150 + 6000], 64))
        router.learn(shape, _engine_count(shape, ratio=3.6), router.decide(shape)[0], trusted=True)
    probe = router.shape("chat", _body(PROSE[20000:26000], 64))
    est, _ = router.decide(probe)
    assert est.prompt_tokens >= _engine_count(probe, ratio=3.6)  # learned: counted safely at the new ratio


def test_a_trusted_count_outside_the_hard_bounds_is_still_rejected_and_not_remembered():
    router = warm_router()
    shape = router.shape("chat", _body(PROSE[:5000], 64))
    est = router.route(shape).estimate
    lie = 5000 * 3  # three tokens per byte: no tokenizer does that
    assert router.learn(shape, lie, est, trusted=True).observation is Observation.OUT_OF_BOUNDS
    assert len(router.memory) == 0
    assert router.decide(shape)[1].pool == SHORT


def test_ten_odd_prompts_do_not_change_ordinary_proses_routing():
    for net in (True, False):
        router = warm_router()
        ordinary = near_boundary_prose(router)
        before = [router.decide(s) for s in ordinary]
        assert {d.pool for _, d in before} == {SHORT, LONG}  # the set straddles the threshold
        for text in odd_prompts(10):
            shape = router.shape("chat", _body(text, 64))
            assert shape.category == "odd"
            ticket = router.route(shape)
            engine = round(shape.text_bytes / 1.4) + FRAMING
            if ticket.decision.pool == SHORT and net:  # the net resends it; the long pool's count is exact
                router.finish(router.moved(ticket, LONG), Outcome(engine, 64, 200, trusted=True))
            elif ticket.decision.pool == SHORT:  # no net: the client gets the 400, the router a floor
                router.finish(ticket, Outcome(B_SHORT + 1, status=400, lower_bound=True))
            else:
                router.finish(ticket, Outcome(engine, 64, 200))
        assert [router.decide(s) for s in ordinary] == before, f"net={net}"
        assert router.calibrator.state("prose").samples == 80


def test_a_resent_odd_prompt_goes_long_after_its_floor_or_count():
    router = warm_router()
    text = odd_prompts(1)[0]
    shape = router.shape("chat", _body(text, 64))
    first = router.route(shape)
    # The odd category's cold start (1.0 bytes/token) is conservative already: this one goes long.
    assert first.decision.pool == LONG
    small = router.shape("chat", _body(text[:1400], 64))
    ticket = router.route(small)
    assert ticket.decision.pool == SHORT  # ~1,400 tokens at 1.0 B/token, under 2,048
    router.finish(ticket, Outcome(B_SHORT + 1, status=400, lower_bound=True))  # "at least 2049": a floor
    assert router.route(small).decision.pool == LONG


def test_the_prompt_memory_is_bounded():
    router = BudgetRouter(estimator=EstimatorParams(prompt_memory=8))
    for i in range(50):
        shape = router.shape("chat", _body(f"prompt number {i} " * 40, 16))
        router.learn_bound(shape, 500, router.decide(shape)[0])
    assert len(router.memory) == 8


def _margin(closeness_near: float) -> float:
    """The routing margin at B_short of a bucket whose far requests (small prompts) err by ±25 % and
    whose near-threshold ones err by ±1 %, with the near ones weighted ``closeness_near``."""
    est = LinearEstimator()
    bucket = Bucket(est.prior_weights("prose"), 0.5)
    rng = random.Random(3)
    for i in range(120):
        if i % 2:
            bucket.observe_error(rng.uniform(-0.25, 0.25), 0.95, FAR_WEIGHT)
        else:
            bucket.observe_error(rng.uniform(-0.01, 0.01), 0.95, closeness_near)
    return est.routing_margin(bucket, 0.9)


def test_the_margin_is_priced_on_the_errors_near_the_threshold():
    near = _margin(1.0)
    unweighted = _margin(FAR_WEIGHT)  # every error weighs the same: the ±25 % ones set the tail
    assert unweighted > 0.2 and near < 0.5 * unweighted


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 5000), st.booleans()), max_size=200), st.integers(0, 12))
def test_the_prompt_memory_keeps_its_promises(ops, capacity):
    """Bounded; an exact count is never replaced by a floor; a floor only rises."""
    memory = PromptMemory(capacity)
    router = BudgetRouter()
    shapes = [router.shape("chat", _body(f"prompt {i} " * 20, 16)) for i in range(31)]
    model: dict[int, tuple[int, bool]] = {}
    for which, tokens, exact in ops:
        old = model.get(which) if shapes[which] in memory else None  # None: never stored, or evicted
        kept = memory.remember(shapes[which], tokens, exact, 100)
        if exact or old is None or (not old[1] and tokens > old[0]):
            model[which] = (tokens, exact)
        assert len(memory) <= capacity
        if capacity:
            assert kept is not None and (kept.tokens, kept.exact) == model[which]
    for which, (tokens, exact) in model.items():
        found = memory.lookup(shapes[which])
        assert found is None or (found.tokens, found.exact) == (tokens, exact)  # evicted, or as promised
