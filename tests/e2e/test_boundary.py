"""``L_total == B_short`` goes short, one token more goes long, through the real Envoy and router.

``B_short`` is set to the total the router's own pure ``BudgetRouter`` routes the body by at cold
start (the default estimator's, margin included), under exactly the configuration the stack gives the
router process. The requests name a model the pools do not serve: the pool answers 404 with no
``usage``, so the router learns nothing and stays at its cold start for every request of the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest

from extproc.algorithm import shape_from_body
from extproc.algorithm.request_shape import CHAT
from extproc.router_factory import build_router
from extproc.stack.stack import Stack, StackOptions, router_config
from tests.conftest import start_stack
from tests.e2e.client import body_for, calibration, post

pytestmark = pytest.mark.e2e


def stack_router_estimate(body: dict[str, Any]) -> int:
    """The cold-start L_total of ``body`` under the flags the stack passes to ``budget-router serve``,
    once ``B_short`` is that total: the estimator refines only estimates near a threshold, so the
    threshold moves until it sits on the total it produces (a fixed point after a step or two)."""
    cfg, total = router_config(StackOptions()), None
    for _ in range(5):
        router = build_router(cfg)
        estimate, _ = router.decide(shape_from_body(CHAT, body, router.categorizer))
        if estimate.total == total:
            return total
        total = estimate.total
        cfg = replace(cfg, routing=replace(cfg.routing, b_short=total))
    raise AssertionError(f"no stable estimate for B_short: {total}")


BODY = {**body_for("prose", 3_000, max_tokens=100, seed=5), "model": "not-served-here"}
B_SHORT = stack_router_estimate(BODY)


@pytest.fixture(scope="module")
def boundary_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(tmp_path_factory, "boundary", router_flags=("--routing-b-short", str(B_SHORT))) as stack:
        yield stack


async def test_equal_to_b_short_goes_short_one_more_token_goes_long(boundary_stack: Stack) -> None:
    at_boundary = orjson.dumps(BODY)
    one_more = orjson.dumps({**BODY, "max_tokens": BODY["max_tokens"] + 1})
    async with aiohttp.ClientSession() as session:
        replies = [await post(session, boundary_stack.url, raw) for raw in (at_boundary, one_more, at_boundary)]
    assert [r.status for r in replies] == [404, 404, 404]  # the pools' own answer to an unknown model
    pools = [boundary_stack.access_log.pool(r.request_id) for r in replies]
    assert pools == ["short", "long", "short"]
    assert all(state["samples"] == 0 for state in calibration(boundary_stack).values())
