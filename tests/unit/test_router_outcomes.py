"""What ``BudgetRouter`` learns from a response it did not sample: the net's outcomes (a short-pool
error, an answer Envoy resent to the long pool, a lower bound) are the router's policy, so the server
and the simulator get the same answer from ``wants``/``moved``/``finish``."""

from __future__ import annotations

from extproc.algorithm import BudgetRouter, CalibrationParams, Outcome, Ticket
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.pressure import InFlightPressure

PROSE = {"messages": [{"role": "user", "content": "The quick brown fox jumps over the lazy dog. " * 8}]}


def converged(sample_rate: float = 0.0) -> BudgetRouter:
    router = BudgetRouter(calibration=CalibrationParams(converged_sample_rate=sample_rate))
    router.calibrator.load({"prose": {"mean": 4.5, "dev": 0.1, "samples": 500}})
    return router


def short_ticket(router: BudgetRouter) -> Ticket:
    ticket = router.route(router.shape("chat", {**PROSE, "max_tokens": 10}))
    assert ticket.decision.pool == SHORT and ticket.shape is not None and ticket.shape.category == "prose"
    return ticket


def in_flight(router: BudgetRouter) -> dict[str, int]:
    assert isinstance(router.pressure, InFlightPressure)
    return dict(router.pressure.in_flight)


def test_an_unsampled_success_teaches_nothing_but_its_short_pool_error_does():
    router = converged()
    ticket = short_ticket(router)
    assert not ticket.observe and not router.wants(ticket, 200)
    assert router.finish(ticket, Outcome(70, 3, status=200)) is None  # what sampling skips stays skipped
    assert router.finish(ticket, Outcome(70, 3)) is None  # the simulator's completion (status unknown)
    assert router.calibrator.state("prose").samples == 500
    assert router.wants(ticket, 400) and router.wants(ticket, 503)  # every short-pool error is read
    learned = router.finish(ticket, Outcome(70, status=400))
    assert learned is not None and learned.observation.value == "accepted"
    assert router.calibrator.state("prose").samples == 501


def test_of_the_long_pool_only_a_400_is_read_when_unsampled():
    router = converged()
    body = {**PROSE, "max_tokens": 100_000}  # beyond the short context: long by threshold
    ticket = router.route(router.shape("chat", body))
    assert ticket.decision.pool == LONG and not ticket.observe
    assert router.wants(ticket, 400) and not router.wants(ticket, 503) and not router.wants(ticket, 200)


def test_an_unreadable_request_never_teaches():
    router = converged()
    ticket = router.route(None)
    assert not router.wants(ticket, 400)
    assert router.finish(ticket, Outcome(70, status=400)) is None


def test_an_answer_the_net_moved_to_the_long_pool_is_learned_and_counted_there():
    router = converged(sample_rate=1.0)  # observed: tracked in flight until finish
    ticket = short_ticket(router)
    assert ticket.observe and in_flight(router) == {SHORT: 1, LONG: 0}
    moved = router.moved(ticket, LONG)
    assert (moved.pool, moved.decision.pool) == (LONG, SHORT)
    assert in_flight(router) == {SHORT: 0, LONG: 1}
    assert router.moved(moved, LONG) is moved  # no second move for the same answer
    assert router.finish(moved, Outcome(70, 3, status=200)) is not None
    assert in_flight(router) == {SHORT: 0, LONG: 0}


def test_an_unsampled_answer_the_net_moved_is_learned_without_touching_the_leases():
    router = converged()
    ticket = short_ticket(router)
    before = router.pressure.pressure(SHORT), router.pressure.pressure(LONG)
    moved = router.moved(ticket, LONG)
    assert (router.pressure.pressure(SHORT), router.pressure.pressure(LONG)) == before  # a lease is not moved
    assert router.wants(moved, 200) and not router.wants(ticket, 200)
    assert router.finish(moved, Outcome(70, 3, status=200)) is not None
    assert router.calibrator.state("prose").samples == 501


def test_a_lower_bound_outcome_is_a_floor_for_that_prompt_only():
    router = converged()
    before = router.calibrator.ratio("prose")
    ticket = short_ticket(router)
    learned = router.finish(ticket, Outcome(150, status=400, lower_bound=True))
    assert learned is not None and learned.observation.value == "accepted"
    assert router.calibrator.ratio("prose") == before  # the category is left alone
    assert router.calibrator.state("prose").samples == 500  # a bound is not a sample
    assert ticket.shape is not None
    est, _ = router.decide(ticket.shape)
    assert est.prompt_tokens >= 150  # the same prompt is now routed by at least the floor
    other = router.shape("chat", {"messages": [{"role": "user", "content": "A lazy dog sleeps. " * 18}]})
    assert router.decide(other)[0].prompt_tokens < 150  # another prompt of the same size is not
