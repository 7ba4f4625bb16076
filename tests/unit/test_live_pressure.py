"""The live pressure policy: engines' word while fresh, own sends on top, local count when stale."""

from __future__ import annotations

import pytest

from extproc.algorithm.dispatch import LONG, SHORT, DispatchPolicy, decide
from extproc.algorithm.pressure import LIVE, LOCAL, EngineLoad, LivePressure, Sample, engine_pressure, pool_load


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def live(clock: Clock, short: int = 4, long: int = 8, max_age_s: float = 0.5) -> LivePressure:
    return LivePressure({SHORT: short, LONG: long}, max_age_s, clock)


def test_engine_pressure_is_queue_against_slots_or_kv_whichever_is_higher() -> None:
    assert engine_pressure(EngineLoad(running=4, waiting=2), 4) == pytest.approx(1.5)
    assert engine_pressure(EngineLoad(running=1, kv_usage=0.97), 4) == pytest.approx(0.97)
    assert engine_pressure(EngineLoad(running=1), 4, sent_since=3) == pytest.approx(1.0)


def test_pool_load_sums_queues_and_takes_the_fullest_cache() -> None:
    load = pool_load({"a": EngineLoad(2, 1, 0.3), "b": EngineLoad(3, 0, 0.8)})
    assert load == EngineLoad(5, 1, 0.8)


def test_no_sample_means_local_count_and_a_counted_fallback() -> None:
    clock = Clock()
    p = live(clock)
    p.acquire(SHORT)
    assert p.pressure(SHORT) == pytest.approx(0.25)
    assert p.source[SHORT] == LOCAL and p.fallbacks[SHORT] == 1


def test_fresh_sample_overrides_the_local_count_and_adds_own_sends_since() -> None:
    clock = Clock()
    p = live(clock)
    p.observe(SHORT, Sample(EngineLoad(running=4, waiting=2), at=clock.t, answered=1, endpoints=1, sent_mark=0))
    assert p.pressure(SHORT) == pytest.approx(6 / 4)  # other replicas' load shows, though we sent none
    assert p.source[SHORT] == LIVE
    p.lease(SHORT)
    p.acquire(SHORT)  # sent after the scrape began: the engines could not have counted these yet
    assert p.pressure(SHORT) == pytest.approx(8 / 4)


def test_sends_before_the_scrape_began_are_not_counted_twice() -> None:
    clock = Clock()
    p = live(clock)
    p.acquire(SHORT)
    p.acquire(SHORT)
    p.observe(SHORT, Sample(EngineLoad(running=2), at=clock.t, answered=1, endpoints=1, sent_mark=p.sent[SHORT]))
    assert p.pressure(SHORT) == pytest.approx(2 / 4)


def test_stale_sample_falls_back_to_local_count() -> None:
    clock = Clock()
    p = live(clock, max_age_s=0.5)
    p.observe(SHORT, Sample(EngineLoad(running=40), at=clock.t, answered=1, endpoints=1, sent_mark=0))
    clock.t += 0.49
    assert p.pressure(SHORT) == pytest.approx(10.0)
    clock.t += 0.02
    assert p.pressure(SHORT) == 0.0
    assert p.source[SHORT] == LOCAL and p.fallbacks[SHORT] == 1
    assert p.age(SHORT) == pytest.approx(0.51)


def test_answered_endpoints_stand_for_the_pool() -> None:
    """Two of four endpoints answered with 3 requests each: half the pool holds 6 of its 2 slots."""
    clock = Clock()
    p = live(clock, short=4)
    p.observe(SHORT, Sample(EngineLoad(running=6), at=clock.t, answered=2, endpoints=4, sent_mark=0))
    assert p.pressure(SHORT) == pytest.approx(3.0)
    same = live(clock, short=2)  # a pool of just the two answering endpoints reads the same
    same.observe(SHORT, Sample(EngineLoad(running=6), at=clock.t, answered=2, endpoints=2, sent_mark=0))
    assert same.pressure(SHORT) == pytest.approx(p.pressure(SHORT))


def test_decision_rule_receives_live_pressure() -> None:
    """Every replica reading the same engines decides alike, whatever its own share of the load."""
    clock = Clock()
    policy = DispatchPolicy(spill_threshold=1.0)
    replicas = [live(clock) for _ in range(3)]
    for r in replicas:
        r.observe(SHORT, Sample(EngineLoad(running=4, waiting=1), at=clock.t, answered=1, endpoints=1, sent_mark=0))
    assert {decide(100, policy, r.pressure(SHORT), r.pressure(LONG)).reason for r in replicas} == {"spillover"}
