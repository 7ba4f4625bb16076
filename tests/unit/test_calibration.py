import random

import pytest

from extproc.algorithm import CalibrationParams, Calibrator, Observation


def feed(cal, category, true_ratio, n, rng, noise=0.06):
    for _ in range(n):
        tokens = rng.randint(200, 4000)
        ratio = true_ratio * (1 + rng.gauss(0, noise))
        cal.observe(category, tokens * ratio, tokens)


@pytest.mark.parametrize("true_ratio", [4.48, 3.52, 2.01, 1.4, 5.5])
@pytest.mark.parametrize("seed", range(5))
def test_converges_within_50_samples_to_3_5_percent(true_ratio, seed):
    cal = Calibrator(CalibrationParams(), ["k"])
    feed(cal, "k", true_ratio, 50, random.Random(seed))
    err = abs(cal.state("k").mean - true_ratio) / true_ratio
    assert err <= 0.035, err


def test_plain_paper_ema_would_not_converge_that_fast():
    # Documents why the prior counts as one pseudo-sample: w = 1-beta from 4.0 leaves CJK ~8 % off.
    mean = 4.0
    for _ in range(50):
        mean = 0.95 * mean + 0.05 * 2.01
    assert abs(mean - 2.01) / 2.01 > 0.035


def test_conservative_ratio_is_below_mean_and_never_below_floor():
    cal = Calibrator(CalibrationParams(min_ratio=0.5), ["k"])
    feed(cal, "k", 3.0, 40, random.Random(1), noise=0.2)
    st = cal.state("k")
    assert cal.ratio("k") == pytest.approx(st.mean - st.dev)
    assert cal.ratio("k") < st.mean
    wild = Calibrator(CalibrationParams(gamma=50.0), ["k"])
    feed(wild, "k", 3.0, 40, random.Random(1), noise=0.2)
    assert wild.ratio("k") == 0.5  # clamped: c* can never reach zero


def test_gate_before_min_samples_only_allows_more_conservative():
    cal = Calibrator(CalibrationParams(min_samples=10), ["k"])
    for _ in range(5):
        cal.observe("k", 6000, 1000)  # 6 B/token: would mean fewer tokens than the cold start
    assert cal.ratio("k") <= 4.0
    for _ in range(30):
        cal.observe("k", 6000, 1000)
    assert cal.ratio("k") > 5.0
    cjk = Calibrator(CalibrationParams(min_samples=10), ["c"])
    cjk.observe("c", 1500, 1000)
    assert cjk.ratio("c") < 4.0  # a lower ratio (more tokens) is trusted at once


@pytest.mark.parametrize(
    ("nbytes", "tokens", "result"),
    [
        (100, 0, Observation.INVALID),
        (100, -5, Observation.INVALID),
        (0, 10, Observation.INVALID),
        (100, 10**9, Observation.OUT_OF_BOUNDS),
        (10**6, 1, Observation.OUT_OF_BOUNDS),
    ],
)
def test_absurd_observations_rejected(nbytes, tokens, result):
    cal = Calibrator(CalibrationParams(), ["k"])
    assert cal.observe("k", nbytes, tokens) is result
    assert cal.state("k").samples == 0


def test_outliers_rejected_once_warmed_up():
    cal = Calibrator(CalibrationParams(), ["k"])
    feed(cal, "k", 4.0, 30, random.Random(2), noise=0.03)
    before = cal.state("k").mean
    assert cal.observe("k", 7000, 1000) is Observation.OUTLIER
    assert cal.state("k").mean == before


@pytest.mark.parametrize("lie", ["zero", "huge", "random"])
def test_lying_backend_cannot_push_ratio_out_of_bounds(lie):
    p = CalibrationParams()
    cal = Calibrator(p, ["k"])
    rng = random.Random(3)
    feed(cal, "k", 4.4, 60, rng, noise=0.03)
    for _ in range(2000):
        nbytes = rng.randint(1000, 100000)
        tokens = {"zero": 0, "huge": 10**9, "random": rng.randint(1, 10**6)}[lie]
        cal.observe("k", nbytes, tokens)
    assert p.min_ratio <= cal.ratio("k") <= p.max_ratio
    assert p.min_ratio <= cal.state("k").mean <= p.max_ratio


def test_snapshot_round_trip_and_bad_entries_ignored():
    cal = Calibrator(CalibrationParams(), ["a", "b"])
    feed(cal, "a", 3.0, 20, random.Random(4))
    snap = cal.snapshot()
    other = Calibrator(CalibrationParams(), [])
    other.load({**snap, "bad": {"mean": "x"}, "neg": {"mean": -1, "dev": 0, "samples": 3}})
    assert other.snapshot()["a"] == snap["a"]
    assert "bad" not in other.snapshot() and "neg" not in other.snapshot()


def test_merge_is_sample_weighted():
    a = Calibrator(CalibrationParams(), [])
    a.load({"k": {"mean": 4.0, "dev": 0.1, "samples": 30}})
    a.merge([{"k": {"mean": 2.0, "dev": 0.1, "samples": 10}}])
    assert a.state("k").mean == pytest.approx(3.5)


def test_category_priors_make_cjk_safe_from_the_first_request():
    cal = Calibrator(CalibrationParams(), ["prose", "cjk"])
    assert cal.ratio("prose") == 4.0 and cal.ratio("cjk") == 1.5
    cal.observe("cjk", 3000, 1000)  # 3 B/token observed: not trusted above the prior until warmed up
    assert cal.ratio("cjk") <= 1.5


def test_priors_from_config_and_their_errors():
    from extproc.config import ConfigError, load_config
    from extproc.router_factory import build_router

    r = build_router(load_config(env={"BUDGET_ROUTER_CALIBRATION_PRIORS": "cjk=2.0,code=3.5"}))
    assert r.calibrator.ratio("code") == 3.5 and r.calibrator.ratio("cjk") == 2.0
    with pytest.raises(ConfigError, match="not category=bytes_per_token"):
        load_config(env={"BUDGET_ROUTER_CALIBRATION_PRIORS": "cjk:2"})
    with pytest.raises(ConfigError, match="priors out of bounds"):
        load_config(env={"BUDGET_ROUTER_CALIBRATION_PRIORS": "cjk=40"})
