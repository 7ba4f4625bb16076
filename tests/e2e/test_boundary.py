"""``L_total == B_short`` goes short, one token more goes long, through the real Envoy and router.

``B_short`` is set to the estimate the router's own pure ``BudgetRouter`` computes for the body at
cold start, under exactly the configuration the stack gives the router process. The requests name a
model the pools do not serve: the pool answers 404 with no ``usage``, so the router learns nothing and
its ratio stays at the cold start for every request of the test.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    """The cold-start L_total of ``body`` under the flags the stack passes to ``budget-router serve``."""
    router = build_router(router_config(StackOptions()))
    return router.estimate(shape_from_body(CHAT, body, router.categorizer)).total


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
