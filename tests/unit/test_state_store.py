import os
import stat

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

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
    x = LinearEstimator.vector([20000.0, 15000.0, 100, 3500, 300, 900, 3000, 0, 0, 0, 0, 0], 0.0, 2, 0)
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


# -- malformed entries: skipped with a warning and a count, never fatal -----------------------------
GOOD = {"updated": 0.0, "categories": {"prose": {"mean": 4.4, "dev": 0.2, "samples": 120}}}
BAD_ENTRIES = {
    "list-updated": {"updated": [1], "categories": {"prose": {"mean": 3.0, "dev": 0.1, "samples": 5}}},
    "str-updated": {"updated": "soon", "categories": {"prose": {"mean": 3.0, "dev": 0.1, "samples": 5}}},
    "bool-updated": {"updated": True, "categories": {}},
    "not-a-dict": [1, 2],
    "categories-list": {"updated": 0.0, "categories": [1]},
}


def write_state(path, replicas) -> None:
    path.write_bytes(orjson.dumps({"version": 1, "replicas": replicas}))


def fresh_replicas(now: float, **entries):
    return {
        rid: {**e, "updated": now} if isinstance(e, dict) and isinstance(e.get("updated"), float) else e
        for rid, e in entries.items()
    }


def test_malformed_replica_entries_are_skipped_and_counted(tmp_path, caplog):
    import time

    path = tmp_path / "state.json"
    write_state(path, fresh_replicas(time.time(), good=GOOD, **BAD_ENTRIES))
    store = StateStore(str(path), "me")
    c = cal()
    with caplog.at_level("WARNING", logger="budget_router.state"):
        assert store.load_into(c) == 1
    assert c.state("prose").samples == 120 and c.state("prose").mean == 4.4
    assert store.skipped_entries == len(BAD_ENTRIES)
    assert "list-updated" in caplog.text and "str-updated" in caplog.text


def test_malformed_categories_are_skipped_and_the_rest_of_the_entry_used(tmp_path):
    import time

    path = tmp_path / "state.json"
    cats = {
        "prose": {"mean": 4.4, "dev": 0.2, "samples": 120, "v2_extra": {"anything": 1}},  # extra keys are fine
        "null-mean": {
            "mean": float("nan"),  # orjson writes NaN as null
            "dev": 0.1,
            "samples": 5,
        },
        "negative": {"mean": 3.0, "dev": 0.1, "samples": -4},
        "bool": {"mean": 3.0, "dev": 0.1, "samples": True},
        "string": {"mean": "3.0", "dev": 0.1, "samples": 4},
        "neg-dev": {"mean": 3.0, "dev": -0.1, "samples": 4},
        "missing": {"mean": 3.0},
        "not-a-dict": 7,
    }
    raw = orjson.dumps({"version": 1, "replicas": {"peer": {"updated": time.time(), "categories": cats}}})
    path.write_bytes(raw)
    store = StateStore(str(path), "me")
    c = cal()
    assert store.load_into(c) == 1
    assert set(c.snapshot()) == {"prose"}
    assert store.skipped_entries == len(cats) - 1


def test_sync_survives_any_malformed_file_and_keeps_good_peers(tmp_path):
    import time

    path = tmp_path / "state.json"
    write_state(path, fresh_replicas(time.time(), good=GOOD, **BAD_ENTRIES))
    store = StateStore(str(path), "me")
    store.sync(cal())  # raised TypeError on "updated": [1]
    replicas = orjson.loads(path.read_bytes())["replicas"]
    assert set(replicas) == {"good", "me"}
    assert store.sync_failures == 0


def test_a_failing_sync_is_logged_and_counted_not_raised(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.mkdir()  # a directory where the file should be: every read and write fails
    store = StateStore(str(path), "me")
    with caplog.at_level("WARNING", logger="budget_router.state"):
        store.sync(cal())
    assert store.sync_failures == 1 and "could not sync" in caplog.text


def test_newest_snapshot_of_the_demo_view_skips_malformed_entries(tmp_path):
    import time

    from extproc.stack.router_view import newest_snapshot

    path = tmp_path / "state.json"
    write_state(path, fresh_replicas(time.time(), good=GOOD, **BAD_ENTRIES))
    assert newest_snapshot(path, CalibrationParams())["prose"].samples == 120


@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3),
        max_leaves=20,
    )
)
@settings(max_examples=300, deadline=None)
def test_parser_never_raises_and_only_returns_valid_state(doc):
    import math

    from extproc.algorithm.calibration_state import parse_state

    for raw in (
        orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS),
        orjson.dumps({"replicas": doc}),
        orjson.dumps({"replicas": {"r": doc}}),
        orjson.dumps({"replicas": {"r": {"updated": 1, "categories": doc}}}),
    ):
        parsed = parse_state(raw, CalibrationParams())
        for entry in parsed.replicas.values():
            assert math.isfinite(entry.updated)
            for st_ in entry.categories.values():
                assert math.isfinite(st_.mean) and math.isfinite(st_.dev) and st_.dev >= 0
                assert isinstance(st_.samples, int) and st_.samples >= 0


# -- the periodic sync: file I/O off the loop, calibrator only on it, never dies -----------------------
class ThreadRecordingCalibrator(Calibrator):
    def __init__(self) -> None:
        super().__init__(CalibrationParams(), [])
        self.threads: set[int] = set()

    def merge(self, peers):
        import threading

        self.threads.add(threading.get_ident())
        return super().merge(peers)

    def snapshot(self):
        import threading

        self.threads.add(threading.get_ident())
        return super().snapshot()


def test_periodic_sync_touches_the_calibrator_only_on_the_event_loop_and_survives_failures(tmp_path):
    import asyncio
    import threading
    import time

    from extproc.server.state_store import periodic_sync

    path = tmp_path / "state.json"
    c = ThreadRecordingCalibrator()
    store = StateStore(str(path), "me")

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(periodic_sync(store, c, 0.01, stop))
        while not path.exists():
            await asyncio.sleep(0.01)
        path.unlink()
        path.mkdir()  # every read fails now
        await asyncio.sleep(0.1)
        path.rmdir()
        write_state(path, fresh_replicas(time.time(), good=GOOD, **BAD_ENTRIES))
        while "me" not in orjson.loads(path.read_bytes())["replicas"]:
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert c.threads == {threading.get_ident()}  # asyncio.run runs the loop on this thread
    assert store.sync_failures > 0 and store.skipped_entries > 0
    assert c.state("prose").samples == 120  # still syncing after the failures and the malformed file
    assert orjson.loads(path.read_bytes())["replicas"]["me"]


# -- containers, restarts, read-only mounts (issue 25) --------------------------------------------------
def entries(path):
    return orjson.loads(path.read_bytes())["replicas"]


def test_the_default_identity_is_stable_per_host_and_port_and_distinct_per_worker():
    from extproc.server.state_store import instance_id

    assert instance_id("", "0.0.0.0:9002", 9002) == instance_id("", "0.0.0.0:9002", 9002)
    assert instance_id("", "0.0.0.0:9002", 9002).endswith(":9002")
    assert instance_id("pod-a", "0.0.0.0:9002", 9002) == "pod-a"
    assert instance_id("pod-a", "x", 9002, worker=1, workers=3) == "pod-a/w1"
    assert instance_id("", "unix:/run/r.sock", 0).endswith(":unix:/run/r.sock")


def test_a_restarted_instance_loads_its_own_entry_instead_of_overwriting_it_cold(tmp_path):
    """A container restart: same hostname, same pid 1, same port, so the same id."""
    path = tmp_path / "state.json"
    StateStore(str(path), "box:9002").sync(cal(prose={"mean": 4.4, "dev": 0.2, "samples": 12}))
    again = Calibrator(CalibrationParams(), ["prose"])
    assert StateStore(str(path), "box:9002").load_into(again) == 1
    StateStore(str(path), "box:9002").sync(again)
    assert entries(path)["box:9002"]["categories"]["prose"]["samples"] == 12  # not 0


def test_instances_that_stopped_writing_fold_into_one_compacted_entry(tmp_path, monkeypatch):
    from extproc.server import state_store

    path, clock = tmp_path / "state.json", [1_000_000.0]
    monkeypatch.setattr(state_store.time, "time", lambda: clock[0])
    for start in range(50):  # 50 short-lived pods, one save each, a minute apart
        StateStore(str(path), f"pod-{start}", live_window_s=90).sync(cal(code={"mean": 3.0, "dev": 0.1, "samples": 10}))
        clock[0] += 60
    kept = entries(path)
    assert len(kept) <= 3 and state_store.COMPACTED in kept  # the two live ones and the compacted rest
    assert kept[state_store.COMPACTED]["categories"]["code"]["mean"] == 3.0
    fresh = Calibrator(CalibrationParams(), [])
    StateStore(str(path), "new", live_window_s=90).load_into(fresh)
    assert fresh.state("code").mean == 3.0


def test_an_orphaned_temp_file_is_removed(tmp_path):
    path = tmp_path / "state.json"
    orphan = tmp_path / ".state.json.k9x2.tmp"  # what a writer killed mid-write leaves
    orphan.write_bytes(b"{half")
    StateStore(str(path), "a").load_into(cal())
    assert not orphan.exists()
    orphan.write_bytes(b"{half")
    StateStore(str(path), "a").sync(cal())
    assert not orphan.exists() and path.exists()


def test_a_future_date_is_clamped_and_then_expires(tmp_path, monkeypatch):
    from extproc.server import state_store

    path, clock = tmp_path / "state.json", [1_000_000.0]
    monkeypatch.setattr(state_store.time, "time", lambda: clock[0])
    future = {"updated": clock[0] + 10 * 365 * 86400, "categories": {"prose": {"mean": 5.0, "dev": 0.1, "samples": 9}}}
    path.write_bytes(orjson.dumps({"version": 1, "replicas": {"from-the-future": future}}))
    store = StateStore(str(path), "a", live_window_s=90)
    store.sync(cal())
    assert entries(path)["from-the-future"]["updated"] == clock[0]
    clock[0] += state_store.STALE_AFTER_S + 1
    store.sync(cal())
    assert set(entries(path)) == {"a"}


def test_no_entry_weighs_more_than_the_cap_in_a_blend(tmp_path):
    from extproc.server.state_store import SAMPLE_WEIGHT_CAP

    path = tmp_path / "state.json"
    StateStore(str(path), "huge").sync(cal(prose={"mean": 2.0, "dev": 0.1, "samples": 10**9}))
    ours = cal(prose={"mean": 4.0, "dev": 0.1, "samples": SAMPLE_WEIGHT_CAP})
    StateStore(str(path), "ours").sync(ours)
    assert ours.state("prose").mean == 3.0  # an equal blend, not 2.0000002


def test_a_read_only_directory_loads_says_saves_are_off_once_and_never_raises(tmp_path, caplog, monkeypatch):
    import errno

    from extproc.server import state_store

    path = tmp_path / "state.json"
    StateStore(str(path), "a").sync(cal(prose={"mean": 4.4, "dev": 0.2, "samples": 30}))
    real_open = state_store.os.open

    def read_only_fs(file, flags, *args):  # what a read-only mount answers to any create or write
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), file)
        return real_open(file, flags, *args)

    monkeypatch.setattr(state_store.os, "open", read_only_fs)
    store, fresh = StateStore(str(path), "a"), Calibrator(CalibrationParams(), ["prose"])
    with caplog.at_level("WARNING", logger="budget_router.state"):
        assert store.load_into(fresh) == 1 and fresh.state("prose").samples == 30  # loaded, not cold
        for _ in range(3):
            store.sync(fresh)
    said = [r for r in caplog.records if "saves are off" in r.getMessage()]
    assert len(said) == 1 and not any(r.exc_info for r in caplog.records)
    assert store.read_only and store.sync_failures == 0
