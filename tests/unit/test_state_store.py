import os
import stat

import orjson

from extproc.algorithm import CalibrationParams, Calibrator
from extproc.server.state_store import StateStore


def cal(**state):
    c = Calibrator(CalibrationParams(), [])
    c.load(state)
    return c


def test_round_trip_restart_starts_warm(tmp_path):
    path = tmp_path / "d" / "state.json"
    a = cal(prose={"mean": 4.4, "dev": 0.2, "samples": 120})
    StateStore(str(path), replica_id="a").sync(a)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    fresh = Calibrator(CalibrationParams(), ["prose"])
    assert StateStore(str(path), replica_id="b").load_into(fresh) == 1
    assert fresh.state("prose").mean == 4.4 and fresh.state("prose").samples == 120


def test_replicas_converge_through_the_file(tmp_path):
    path = str(tmp_path / "state.json")
    a, b = cal(cjk={"mean": 1.5, "dev": 0.1, "samples": 100}), cal(cjk={"mean": 1.7, "dev": 0.1, "samples": 100})
    sa, sb = StateStore(path, "a"), StateStore(path, "b")
    for _ in range(3):
        sa.sync(a)
        sb.sync(b)
    assert abs(a.state("cjk").mean - b.state("cjk").mean) < 0.02
    assert 1.5 < a.state("cjk").mean < 1.7
    data = orjson.loads((tmp_path / "state.json").read_bytes())
    assert set(data["replicas"]) == {"a", "b"}


def test_corrupt_file_is_ignored_not_fatal(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(b"{not json")
    c = cal()
    assert StateStore(str(path), "a").load_into(c) == 0
    StateStore(str(path), "a").sync(c)  # rewrites a valid file
    assert orjson.loads(path.read_bytes())["version"] == 1


def test_disabled_store_does_nothing(tmp_path):
    c = cal()
    assert StateStore("", "a").load_into(c) == 0
    StateStore("", "a").sync(c)
    assert list(tmp_path.iterdir()) == []


def _trained_linear():
    from extproc.algorithm.linear_estimator import EstimatorParams, LinearEstimator

    est = LinearEstimator(EstimatorParams(kind="linear"))
    x = LinearEstimator.vector([20000.0, 15000.0, 100, 3500, 300, 900, 3000, 0, 0, 0], 0.0, 2, 0)
    for i in range(60):
        est.observe("llama", "prose", x, 4700.0 + (i % 7) * 20)
    return est, x


def test_linear_models_survive_a_restart_and_old_files_still_load(tmp_path):
    from extproc.algorithm.linear_estimator import EstimatorParams, LinearEstimator

    path = tmp_path / "state.json"
    est, x = _trained_linear()
    StateStore(str(path), replica_id="a").sync(cal(), est)
    fresh = LinearEstimator(EstimatorParams(kind="linear"))
    assert StateStore(str(path), replica_id="b").load_into(Calibrator(CalibrationParams(), []), fresh) == 1
    assert fresh.estimate("llama", "prose", x) == est.estimate("llama", "prose", x)
    # a file written without the linear key (the ratio estimator, or an older version) still loads
    StateStore(str(path), replica_id="a").sync(cal(prose={"mean": 4.1, "dev": 0.1, "samples": 80}))
    other = LinearEstimator(EstimatorParams(kind="linear"))
    assert StateStore(str(path), replica_id="c").load_into(Calibrator(CalibrationParams(), []), other) == 1
    assert other.buckets() == {}
