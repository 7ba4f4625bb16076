from extproc.algorithm.dispatch import (
    CAPACITY,
    LONG,
    OVER_LONG_CONTEXT,
    SHORT,
    SPILLOVER,
    THRESHOLD,
    Decision,
    DispatchPolicy,
    decide,
)

P = DispatchPolicy(b_short=8192, short_context=8192, long_context=65536, spillover=True, spill_threshold=1.0)


def test_boundary_equal_goes_short_one_more_goes_long():
    assert decide(8192, P).pool == SHORT
    assert decide(8193, P).pool == LONG


def test_threshold_below_short_context():
    p = DispatchPolicy(b_short=4096, short_context=8192)
    assert decide(4096, p).pool == SHORT
    d = decide(5000, p)
    assert (d.pool, d.reason) == (LONG, THRESHOLD)


def test_capacity_check_precedes_threshold():
    p = DispatchPolicy(b_short=16384, short_context=8192)  # misconfigured threshold above the short context
    d = decide(10000, p)
    assert (d.pool, d.reason) == (LONG, CAPACITY)


def test_over_long_context_still_long_and_labelled():
    d = decide(70000, P)
    assert (d.pool, d.reason) == (LONG, OVER_LONG_CONTEXT)


def test_spillover_only_when_pressure_reached_and_fits():
    assert decide(100, P, short_pressure=0.99).pool == SHORT
    d = decide(100, P, short_pressure=1.0)
    assert (d.pool, d.reason, d.spilled) == (LONG, SPILLOVER, True)
    off = DispatchPolicy(spillover=False)
    assert decide(100, off, short_pressure=5.0).pool == SHORT


def test_spillover_never_to_a_pool_that_cannot_hold_it():
    p = DispatchPolicy(b_short=8192, short_context=8192, long_context=4096)
    d = decide(6000, p, short_pressure=3.0)
    assert d.pool == SHORT


def test_leases_expire_and_tracked_durations_set_their_length():
    from extproc.algorithm.pressure import InFlightPressure

    now = [0.0]
    p = InFlightPressure({"short": 4}, clock=lambda: now[0], initial_duration_s=2.0)
    p.acquire("short")
    p.lease("short")
    assert p.count("short") == 2 and p.pressure("short") == 0.5
    now[0] = 2.5
    assert p.count("short") == 1
    p.release("short", duration_s=12.0)
    assert p.mean_duration["short"] == 0.9 * 2.0 + 0.1 * 12.0
    assert p.count("short") == 0


def test_snapshot_counts_leases_without_popping():
    from extproc.algorithm.pressure import InFlightPressure

    now = [0.0]
    p = InFlightPressure({"short": 4, "long": 2}, clock=lambda: now[0], initial_duration_s=1.0)
    p.lease("short")
    p.acquire("long")
    assert p.snapshot() == {"short": 1, "long": 1}
    now[0] = 5.0
    assert p.snapshot() == {"short": 0, "long": 1}
    assert len(p._leases["short"]) == 1  # untouched until the routing thread purges


def test_no_spill_onto_a_long_pool_that_is_fuller():
    assert decide(100, P, short_pressure=1.2, long_pressure=1.5).pool == SHORT
    assert decide(100, P, short_pressure=1.2, long_pressure=0.5).pool == LONG


def test_no_output_limit_policy():
    reserve, long_ = DispatchPolicy(), DispatchPolicy(no_output_limit="long")
    assert decide(2000, reserve, output_defaulted=True) == Decision("short", "threshold")
    assert decide(2000, long_, output_defaulted=True) == Decision("long", "no_output_limit")
    assert decide(2000, long_, output_defaulted=False) == Decision("short", "threshold")
    assert decide(70000, long_, output_defaulted=True) == Decision("long", "over_long_context")
