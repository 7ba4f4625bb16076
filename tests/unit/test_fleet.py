"""The fleet shape: one value per pool, from which both the engines' and the router's flags follow."""

from __future__ import annotations

import pytest

from extproc.deploy.fleet import DEFAULT_FLEET, FleetShape, PoolShape
from extproc.stack.stack import PoolSpec, StackOptions, pool_argv, router_config


def test_capacity_is_replicas_times_slots_and_b_short_defaults_to_the_short_context() -> None:
    fleet = FleetShape(PoolShape("short", 4096, 32, replicas=3), PoolShape("long", 32768, 8, replicas=2))
    assert fleet.router_flags() == [
        "--routing-short-context=4096",
        "--routing-long-context=32768",
        "--routing-b-short=4096",
        "--spillover-short-capacity=96",
        "--spillover-long-capacity=16",
    ]
    assert FleetShape(b_short=6000).router_shape().b_short == "6000"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: PoolShape("short", 0, 8), "max_model_len"),
        (lambda: PoolShape("short", 8, 8, replicas=0), "replicas"),
        (lambda: FleetShape(PoolShape("short", 70000, 8)), "swap"),
        (lambda: FleetShape(b_short=9000), "b_short"),
        (lambda: FleetShape(PoolShape("long", 8, 8), PoolShape("short", 16, 8)), "named"),
    ],
)
def test_an_impossible_shape_is_refused(make, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


def test_the_embedded_stack_tells_its_router_the_shape_its_emulators_run() -> None:
    opts = StackOptions(short=PoolSpec("short", 2048, 4), long=PoolSpec("long", 16384, 2))
    cfg = router_config(opts)
    assert (cfg.routing.short_context, cfg.routing.long_context, cfg.routing.b_short) == (2048, 16384, 2048)
    assert (cfg.spillover.short_capacity, cfg.spillover.long_capacity) == (4, 2)
    argv = pool_argv(opts, opts.short, 1234)
    assert "--max-model-len=2048" in argv and "--max-num-seqs=4" in argv
    # an explicit router flag still wins (tests make the router believe another context)
    assert router_config(StackOptions(router_flags=("--routing-b-short", "100"))).routing.b_short == 100
    assert StackOptions().short == DEFAULT_FLEET.short
