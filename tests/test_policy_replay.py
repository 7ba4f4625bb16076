"""The simulator and the server run one routing policy: a workload the fleet simulator routed, replayed
through the server's exchange path (real Envoy ext_proc messages) on the same clock and seed, gets the
same decisions, the same sampled observations, the same pool leases and pressure readings, and leaves
the calibrator in the same state."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import orjson

from extproc.algorithm import BudgetRouter, CapacityParams, InFlightPressure, PressureSource
from extproc.config import Config, load_config
from extproc.planner.fleet import FleetSim, PoolConfig
from extproc.planner.routing import RouterDispatch, SimClock
from extproc.router_factory import build_router
from extproc.server.exchange import Exchange, RouterRuntime
from tests.envoy_play import request_body, request_headers, response_body, response_headers, set_headers
from tests.test_simulator import profile, workload

SEED = 7
TEXT = b"the quick brown fox jumps over the lazy dog and keeps running far away "  # prose, ASCII


@dataclass
class Recorded:
    """A ``PressureSource`` that logs every call the router makes (and the clock when it made it)
    before handing it to the real one: proof the protocol is the whole seam, and the trace to compare."""

    inner: PressureSource
    clock: SimClock
    calls: list[tuple] = field(default_factory=list)

    def pressure(self, pool: str) -> float:
        value = self.inner.pressure(pool)
        self.calls.append(("pressure", pool, self.clock.now, value))
        return value

    def acquire(self, pool: str) -> None:
        self.calls.append(("acquire", pool, self.clock.now))
        self.inner.acquire(pool)

    def release(self, pool: str, duration_s: float | None = None) -> None:
        self.calls.append(("release", pool, self.clock.now, duration_s))
        self.inner.release(pool, duration_s)

    def lease(self, pool: str) -> None:
        self.calls.append(("lease", pool, self.clock.now))
        self.inner.lease(pool)


def config() -> Config:
    """Small pools (so the short one spills) and quick convergence (so sampling starts early)."""
    return load_config(
        env={},
        overrides={
            "calibration": {"state_file": "", "converged_samples": 15, "converged_sample_rate": 0.3},
            "spillover": {"short_capacity": 6, "long_capacity": 4},
        },
    )


def recorded_router(cfg: Config) -> tuple[BudgetRouter, SimClock, Recorded]:
    """The production router for ``cfg`` with its pressure source dropped in through ``build_router``."""
    clock = SimClock()
    capacity = CapacityParams(cfg.spillover.short_capacity, cfg.spillover.long_capacity)
    recorder = Recorded(InFlightPressure.for_pools(capacity, clock), clock)
    return build_router(cfg, clock, random.Random(SEED), pressure=recorder), clock, recorder


class LoggedDispatch(RouterDispatch):
    """The simulator's dispatcher, remembering the order of its calls and what each route decided."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.events: list[tuple] = []
        self.decisions: dict[int, tuple[str, str, bool]] = {}

    def choose(self, i: int, now: float) -> int:
        pool = super().choose(i, now)
        t = self._pending[i]
        self.decisions[i] = (t.decision.pool, t.decision.reason, t.observe)
        self.events.append(("route", i, now))
        return pool

    def finished(self, i: int, pool: int, completed: bool, now: float) -> None:
        self.events.append(("finish", i, completed, now))
        super().finished(i, pool, completed, now)


def body_of(text_bytes: int, max_tokens: int) -> bytes:
    text = (TEXT * (text_bytes // len(TEXT) + 1))[:text_bytes].decode()
    return orjson.dumps({"messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})


def test_simulator_and_exchange_path_make_identical_decisions_samples_and_leases() -> None:
    rng = np.random.default_rng(SEED)
    n = 400
    prompt = np.where(rng.random(n) < 0.8, rng.integers(200, 1500, n), rng.integers(9000, 12000, n))
    text_bytes = ((prompt - 7) * rng.normal(4.2, 0.2, n)).astype(np.int64)
    wl = workload(np.arange(n) * 0.004, prompt, rng.integers(5, 40, n), text_bytes=text_bytes)
    cfg = config()

    # 1. The simulator's path: a fleet of short and long instances behind the router.
    sim_router, sim_clock, sim_pressure = recorded_router(cfg)
    dispatch = LoggedDispatch(sim_router, wl, sim_clock)
    short = profile(max_model_len=8192, max_num_seqs=4, step_floor_s=0.01)
    FleetSim([PoolConfig("short", short, 2), PoolConfig("long", profile(max_num_seqs=4), 1)], dispatch).run(wl)

    # 2. The server's path: the same events, in the same order, as Envoy messages into exchanges.
    server_router, server_clock, server_pressure = recorded_router(cfg)
    rt = RouterRuntime(cfg, server_router)
    open_exchanges: dict[int, Exchange] = {}
    decisions: dict[int, tuple[str, str, bool]] = {}
    for event in dispatch.events:
        if event[0] == "route":
            _, i, now = event
            server_clock.now = now
            ex = Exchange(rt)
            ex.handle(request_headers())
            routed = ex.handle(request_body(body_of(int(wl.text_bytes[i]), int(wl.output[i]))))
            header = set_headers(routed.request_body.response.header_mutation)["x-budget-pool"]
            decisions[i] = (header, ex.record.reason, ex.record.observed)
            if ex.done:  # the service closes the stream: Envoy goes on without us
                ex.close()
            open_exchanges[i] = ex
        else:
            _, i, completed, now = event
            server_clock.now = now
            ex = open_exchanges.pop(i)
            if not ex.done:
                if completed:
                    ex.handle(response_headers(200))
                    usage = {"prompt_tokens": int(wl.prompt[i]), "completion_tokens": int(wl.output[i])}
                    ex.handle(response_body(orjson.dumps({"choices": [], "usage": usage})))
                else:  # the instance refused it; a 400 without a token count teaches nothing
                    ex.handle(response_headers(400))
                    ex.handle(response_body(b'{"error":{"message":"rejected"}}'))
                ex.close()

    assert decisions == dispatch.decisions
    assert server_pressure.calls == sim_pressure.calls
    assert server_router.calibrator.snapshot() == sim_router.calibrator.snapshot()
    # ... and the replay exercised every part of the policy.
    observed = [d[2] for d in decisions.values()]
    reasons = {d[1] for d in decisions.values()}
    assert 0 < observed.count(False) < observed.count(True)  # sampled once converged
    assert {"threshold", "capacity", "spillover"} <= reasons
    kinds = {c[0] for c in sim_pressure.calls}
    assert kinds == {"pressure", "acquire", "release", "lease"}
