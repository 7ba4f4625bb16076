"""Estimator v2: the online fit converges to known weights, the margin meets its target and widens
after a shift, models are bounded, a lying backend cannot move routing out of bounds, state round-trips."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest

from extproc.algorithm.calibration import Observation
from extproc.algorithm.features import N_TEXT, TEXT_FEATURES
from extproc.algorithm.linear_estimator import (
    DEFAULT_MODEL,
    EstimatorParams,
    LinearEstimator,
    _excess,
    _excess_quantile,
    _solve_excess,
)

LETTERS, SPACES, WORDS, THREE = (TEXT_FEATURES.index(n) for n in ("letters", "spaces", "words", "three_byte"))


def _request(rng: np.random.Generator, scale: float = 1.0) -> tuple[list[float], float]:
    """Synthetic prose-like request with known true tokens: 0.15/letter + 0.8/word + 0.3/space + 6/message."""
    nbytes = float(rng.uniform(2000, 30000)) * scale
    text = [0.0] * N_TEXT
    text[0] = nbytes
    text[LETTERS] = nbytes * rng.uniform(0.55, 0.85)  # independent variation: the weights are identifiable
    text[SPACES] = nbytes * rng.uniform(0.08, 0.25)
    text[WORDS] = text[SPACES] * rng.uniform(0.5, 0.95)
    messages = int(rng.integers(1, 6))
    tokens = 0.15 * text[LETTERS] + 0.8 * text[WORDS] + 0.3 * text[SPACES] + 6 * messages + 3
    return LinearEstimator.vector(text, 0.0, messages, 0), tokens


def test_fit_converges_to_known_weights():
    est, rng = LinearEstimator(EstimatorParams(kind="linear")), np.random.default_rng(0)
    for _ in range(300):
        x, y = _request(rng)
        assert est.observe("m", "prose", x, y) is Observation.ACCEPTED
    for _ in range(50):
        x, y = _request(rng)
        assert est.estimate("m", "prose", x).point == pytest.approx(y, rel=0.005)
    w = est.bucket("m", "prose").weights  # per 1024 bytes of each class, per message
    assert w[LETTERS] / 1024 == pytest.approx(0.15, rel=0.05) and w[WORDS] / 1024 == pytest.approx(0.8, rel=0.05)


def test_noisy_fit_has_a_margin_that_meets_its_target():
    params = EstimatorParams(kind="linear", underestimate_prob=0.005)
    est, rng = LinearEstimator(params), np.random.default_rng(1)
    for _ in range(400):
        x, y = _request(rng)
        est.observe("m", "prose", x, y * rng.normal(1.0, 0.04))
    bucket = est.bucket("m", "prose")
    sigma, upper, _lower = est.margins(bucket)
    assert 0.03 < sigma < 0.06 and upper >= est.z * sigma + bucket.err_mean
    # the routing margin: E[(e - m)+] * share / 2w = p, so a full-size prompt needs more than a small one
    big, small = est.routing_margin(bucket, 1.0), est.routing_margin(bucket, 0.3)
    assert big > small > 0.0
    k = (big - bucket.err_mean) / sigma
    assert _excess(k) * sigma <= params.underestimate_prob * 2 * params.boundary_window * 1.0001
    # dangerous share on a simulated near-boundary window stays near the target
    dangerous = 0
    for _ in range(4000):
        x, y = _request(rng)
        true = y * rng.normal(1.0, 0.04)
        out = 8192 * rng.uniform(0.8, 1.2) - true
        if out < 16:
            continue
        e = est.estimate("m", "prose", x)
        dangerous += e.routed + out <= 8192 < true + out
    assert dangerous / 4000 < 3 * params.underestimate_prob


def test_margin_widens_after_a_traffic_shift():
    est, rng = LinearEstimator(EstimatorParams(kind="linear")), np.random.default_rng(2)
    for _ in range(200):
        x, y = _request(rng)
        est.observe("m", "prose", x, y * rng.normal(1.0, 0.02))
    before = est.routing_margin(est.bucket("m", "prose"), 0.8)
    for _ in range(15):  # the tokenizer behind the model changed: 25 % more tokens
        x, y = _request(rng)
        est.observe("m", "prose", x, 1.25 * y * rng.normal(1.0, 0.02))
    assert est.routing_margin(est.bucket("m", "prose"), 0.8) > before + 0.05


def test_excess_quantile_inverts_the_expected_excess():
    for target in (1e-5, 1e-3, 0.02, 0.1, 0.3):
        k = _excess_quantile(target)
        assert k >= _solve_excess(target) - 1e-9  # the grid rounds towards the safer (larger) k
        assert _excess(k) <= target * 1.0001 and _excess(k - 0.2) > target


def test_cold_bucket_is_never_less_conservative_than_its_prior():
    est = LinearEstimator(EstimatorParams(kind="linear"))
    x = LinearEstimator.vector([8000.0] + [0.0] * (N_TEXT - 1), 0.0, 2, 0)
    prior_tokens = float(np.dot(est.prior_weights("prose"), x))
    assert est.estimate("m", "prose", x).routed >= prior_tokens
    for _ in range(5):  # a few samples claiming far fewer tokens do not lower the estimate yet
        est.observe("m", "prose", x, prior_tokens * 0.6)
    assert est.estimate("m", "prose", x).routed >= prior_tokens


def _learn(est: LinearEstimator, model: str | None, n: int = 1) -> None:
    """``n`` pool answers (usage) for ``model``: what gives a model its own slot."""
    x = LinearEstimator.vector([4000.0] + [0.0] * (N_TEXT - 1), 0.0, 1, 0)
    for _ in range(n):
        assert est.observe(model, "prose", x, 1000.0) is Observation.ACCEPTED


def test_a_model_gets_a_slot_only_from_a_pools_usage() -> None:
    est = LinearEstimator(EstimatorParams(kind="linear", max_models=2))
    x = LinearEstimator.vector([4000.0] + [0.0] * (N_TEXT - 1), 0.0, 1, 0)
    for i in range(50):  # estimated only (every pool answered 404): no slot, no bucket, nothing saved
        est.estimate(f"bogus-{i}", "prose", x)
    assert est.models() == [] and {m for m, _ in est.buckets()} == {DEFAULT_MODEL}
    assert est.snapshot() == {}
    _learn(est, "real")
    assert est.model_key("real") == "real" and est.models() == ["real"]
    assert set(est.snapshot()) == {"real\tprose"}


def test_slots_are_bounded_and_the_least_recently_used_is_reclaimed() -> None:
    est = LinearEstimator(EstimatorParams(kind="linear", max_models=2))
    _learn(est, "a")
    _learn(est, "b")
    est.model_key("a")  # routing "a" counts as use: "b" is now the least recent
    _learn(est, "c")
    assert est.models() == ["a", "c"] and est.reclaimed == 1
    assert {m for m, _ in est.buckets()} == {"a", "c"}  # b's buckets went with its slot
    for i in range(50):
        _learn(est, f"m{i}")
    assert len(est.models()) == 2 and len(est.buckets()) == 2


@pytest.mark.parametrize("name", ["x" * 129, "bad\r\nname", "nul\x00", "with space", "", "-leading", "é"])
def test_names_that_are_no_model_name_learn_in_the_shared_bucket(name: str) -> None:
    est = LinearEstimator(EstimatorParams(kind="linear"))
    _learn(est, name)
    assert est.models() == [] and set(est.snapshot()) == {f"{DEFAULT_MODEL}\tprose"}


def test_a_state_file_cannot_restore_junk() -> None:
    """An older release persisted a bucket per estimated name (samples 0) and any name at all."""
    est = LinearEstimator(EstimatorParams(kind="linear"))
    _learn(est, "real", 3)
    saved = est.snapshot()
    good = saved["real\tprose"]
    junk = {**saved, "never\tprose": {**good, "samples": 0}, "bad\r\n\tprose": good, "x" * 500 + "\tprose": good}
    fresh = LinearEstimator(EstimatorParams(kind="linear"))
    assert fresh.load(junk) == 1 and fresh.models() == ["real"]


def test_a_lying_backend_cannot_move_routing_out_of_bounds():
    est, rng = LinearEstimator(EstimatorParams(kind="linear")), np.random.default_rng(3)
    x, _y = _request(rng)
    nbytes = x[0] * 1024
    assert est.observe("m", "prose", x, 1.0) is Observation.OUT_OF_BOUNDS  # 20 KB in one token
    assert est.observe("m", "prose", x, nbytes * 10) is Observation.OUT_OF_BOUNDS
    assert est.observe("m", "prose", x, 0) is Observation.INVALID
    lo, _hi = est.bounds(nbytes, x)
    for _ in range(500):  # always claims the extreme in-bounds end: as few tokens as allowed
        est.observe("m", "prose", x, lo * 1.001)
    for scale in (0.2, 1.0, 3.0):
        xs, _ = _request(rng, scale)
        e = est.estimate("m", "prose", xs)
        lo_s, hi_s = est.bounds(xs[0] * 1024, xs)
        assert lo_s <= e.routed <= math.ceil(hi_s)


def test_state_round_trips_and_bad_entries_are_ignored():
    params = EstimatorParams(kind="linear")
    est, rng = LinearEstimator(params), np.random.default_rng(4)
    for _ in range(120):
        x, y = _request(rng)
        est.observe("llama", "prose", x, y * rng.normal(1.0, 0.03))
        est.observe(None, "code", x, 1.3 * y * rng.normal(1.0, 0.03))
    snap = orjson.loads(orjson.dumps(est.snapshot()))
    snap["bad\tprose"] = {"weights": [1.0, 2.0]}
    snap["worse"] = "not a bucket"
    lying = dict(snap["llama\tprose"])
    lying["weights"] = [0.0] * len(lying["weights"])  # a tampered file: zero tokens for everything
    snap["liar\tprose"] = lying
    older = dict(snap["llama\tprose"])  # an older release's layout: same length, other features
    older["features"] = [*older["features"][:-1], "number_runs"]
    snap["older\tprose"] = older
    fresh = LinearEstimator(params)
    assert fresh.load(snap) == 3
    x, _ = _request(rng)
    for model, category in (("llama", "prose"), (None, "code")):
        assert fresh.estimate(model, category, x) == est.estimate(model, category, x)
    lo, _ = fresh.bounds(x[0] * 1024, x)
    assert fresh.estimate("liar", "prose", x).routed >= lo  # clamped to the bytes/token bounds
