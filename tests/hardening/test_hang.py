"""A hung router (SIGSTOP: alive, connected, silent) through the real Envoy.

Before: Envoy's 30 s ``message_timeout`` never fired within a 10 s hang, every request meanwhile
waited until SIGCONT or an HTTP/2 keepalive cut (5.8-10.5 s), and ``up`` left the hung process in
place. Now each request waits at most ``MESSAGE_TIMEOUT_S`` (0.5 s) before Envoy fails open to the
long pool, Envoy's gRPC health check (1 s timeout) takes the router out of rotation within a few
seconds (requests then fail open at once), and ``up``'s supervisor kills and restarts a router that
stopped answering its health probe.
"""

from __future__ import annotations

import os
import signal

import orjson
import pytest

from extproc.gateway.envoy_config import MESSAGE_TIMEOUT_S
from extproc.stack.fault_load import open_loop, summarize
from extproc.stack.probes import grpc_serving
from extproc.stack.stack import Stack, StackOptions
from tests.conftest import start_stack
from tests.e2e.client import body_for
from tests.waiting import until

pytestmark = pytest.mark.e2e

HANG_AT_S, HANG_S = 2.0, 8.0
PROMISE_S = 1.5  # the bound: a hung router costs no request more than this


def bodies(n: int) -> list[bytes]:
    """Short chat requests (both pools can serve them), every other one streaming."""
    return [orjson.dumps(body_for("prose", 300, max_tokens=12, seed=i, stream=i % 2 == 0)) for i in range(n)]


def signal_router(pid: int, sig: signal.Signals) -> None:
    os.kill(pid, sig)


@pytest.mark.slow
async def test_a_router_hung_for_8_s_under_load_costs_no_request_more_than_1_5_s(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    rate, duration = 30.0, HANG_AT_S + HANG_S + 2.0
    planned = bodies(int(rate * duration))
    with start_stack(tmp_path_factory, "hang") as stack:
        pid = stack.routers[0].pid
        assert pid is not None
        try:
            results = await open_loop(
                stack.url, planned.__getitem__, rate, duration, prefix="hang",
                actions=[(HANG_AT_S, lambda: signal_router(pid, signal.SIGSTOP)),
                         (HANG_AT_S + HANG_S, lambda: signal_router(pid, signal.SIGCONT))],
            )  # fmt: skip
        finally:
            os.kill(pid, signal.SIGCONT)  # never leave a stopped process behind a failed assertion
        summary = summarize(results)
        during = summarize([r for r in results if HANG_AT_S <= r.sent_s < HANG_AT_S + HANG_S])
        print(f"\nrouter hung {HANG_S:g} s at {rate:g} req/s: all {summary.line()}; during the hang {during.line()}")
        assert summary.failed == 0, [r for r in results if r.status != 200][:3]
        assert summary.max_ms < PROMISE_S * 1000, summary
        # The hang was real: requests sent into it were served without a router decision (fail-open,
        # the default long route), and the first of them waited out Envoy's message timeout.
        hung = [r for r in results if HANG_AT_S + 0.2 <= r.sent_s < HANG_AT_S + HANG_S - 0.5]
        assert all(stack.access_log.entry(r.request_id)["routed"] is None for r in hung)
        assert {stack.access_log.pool(r.request_id) for r in hung} == {"long"}
        assert during.max_ms >= MESSAGE_TIMEOUT_S * 1000 * 0.9, during
        # SIGCONT: the router decides again (Envoy's health check lets it back in).
        until(lambda: grpc_serving(stack.router_address(0)), "the router serving after SIGCONT")
        stack.wait_upstreams_healthy(timeout_s=20)


@pytest.mark.slow
async def test_a_hung_router_under_up_is_killed_and_restarted(tmp_path_factory: pytest.TempPathFactory) -> None:
    lines: list[str] = []
    opts = StackOptions(run_dir=tmp_path_factory.mktemp("hang-up"), latency_scale=0.0, supervise=True, hang_after_s=2.0)
    with Stack(opts, say=lines.append) as stack:
        router = stack.routers[0]
        first = router.pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        try:
            until(lambda: router.pid != first and grpc_serving(stack.router_address(0)), "a new router", timeout_s=30)
        finally:
            if router.pid == first:
                os.kill(first, signal.SIGCONT)
        [hung] = [line for line in lines if "stopped answering" in line]
        assert hung.startswith(f"router-0 (pid {first}) stopped answering its health probe for ")
        stack.wait_upstreams_healthy(timeout_s=20)
        results = await open_loop(stack.url, bodies(10).__getitem__, 10.0, 1.0, prefix="after")
        assert summarize(results).failed == 0
        until(lambda: any(line.startswith("router-0 serving again") for line in lines), "the restart announced")
