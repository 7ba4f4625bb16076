"""The discrete-event instance/fleet simulator against queueing theory and hand-computed timelines."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest

from extproc.algorithm import BudgetRouter, CalibrationParams, DispatchPolicy, InFlightPressure, LivePressure
from extproc.planner.capacity import erlang_c_wait, erlang_comparison
from extproc.planner.fleet import JSQ, LEAST_REQUEST, OVER_CONTEXT, ROUND_ROBIN, FleetSim, PoolConfig, SimResult
from extproc.planner.latency_hist import LatencyHistogram
from extproc.planner.profiles import InstanceProfile, load_profile
from extproc.planner.routing import SCRAPE_INTERVAL_S, RouterDispatch, SimClock
from extproc.planner.sim_workload import SimWorkload


def profile(**over: object) -> InstanceProfile:
    base = InstanceProfile(
        name="test", max_model_len=65536, max_num_seqs=16, max_num_batched_tokens=8192,
        kv_capacity_tokens=1 << 20, block_size=16, step_floor_s=0.01, step_knee_tokens=0, step_per_token_s=0.0,
        allreduce_floor_s=0.0, allreduce_per_token_s=0.0, kv_read_per_token_s=0.0, prefill_attn_per_pair_s=0.0,
        gpus=1, usd_per_gpu_hour=1.0, max_waiting=None)
    return dataclasses.replace(base, **over)


def workload(arrival: object, prompt: object, output: object, category: str = "prose",
             text_bytes: object = None) -> SimWorkload:
    arr = np.asarray(arrival, dtype=np.float64)
    n = len(arr)
    p = np.broadcast_to(np.asarray(prompt, dtype=np.int64), n).copy()
    o = np.broadcast_to(np.asarray(output, dtype=np.int64), n).copy()
    tb = p * 4 if text_bytes is None else np.broadcast_to(np.asarray(text_bytes, dtype=np.int64), n).copy()
    return SimWorkload("test", arr, p, o, (category,) * n, tb)


def test_queue_waits_match_erlang_c() -> None:
    """One instance, no KV pressure, constant iteration time and geometric output lengths:
    service is exponential (mean 1 s), batch slots are the servers, so waits are M/M/c."""
    c, w, mean_out, lam, n = 2, 0.002, 500, 1.0, 100_000
    prof = profile(max_num_seqs=c, step_floor_s=w, max_num_batched_tokens=10_000)
    waits, expected, p_waits, expected_p = [], [], [], []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        arrival = np.cumsum(rng.exponential(1 / lam, n))
        out = rng.geometric(1 / mean_out, n)
        res = FleetSim([PoolConfig("p", prof, 1)]).run(workload(arrival, 10, out))
        # first token = admission boundary + one prefill iteration
        wait = (res.first_token - arrival - w)[n // 10:]
        p, mean = erlang_c_wait(c, (n - 1) / arrival[-1], 1 / (out.mean() * w))
        waits.append(wait.mean())
        expected.append(mean)
        p_waits.append(np.mean(wait > w))
        expected_p.append(p)
    assert np.mean(waits) == pytest.approx(np.mean(expected), rel=0.05)
    assert np.mean(p_waits) == pytest.approx(np.mean(expected_p), rel=0.05)


def test_the_planners_erlang_check_agrees_on_a_real_profile() -> None:
    """What ``plan`` prints for the profile's pools: the A100 long pool (16 slots) at 90 % load, where
    most requests wait for a slot and waits are many iterations long."""
    check = erlang_comparison("long", load_profile("llama3-70b-a100").long, np.random.default_rng(1))
    assert check.slots == 16 and check.erlang_p_wait > 0.5 and check.comparable
    assert check.sim_p_wait == pytest.approx(check.erlang_p_wait, rel=0.05)
    assert check.sim_excess_wait_s == pytest.approx(check.erlang_excess_wait_s, rel=0.15)


def step(tokens: int, floor: float = 0.01, knee: int = 40, per: float = 1e-5, ar0: float = 0.002,
         ar: float = 1e-6) -> float:
    """The step model written out: weight floor, GEMMs beyond the knee, all-reduce floor and per token."""
    return floor + ar0 + ar * tokens + per * max(0, tokens - knee)


def test_chunked_prefill_and_decode_times_follow_the_step_model() -> None:
    p = profile(step_floor_s=0.01, step_knee_tokens=40, step_per_token_s=1e-5, allreduce_floor_s=0.002,
                allreduce_per_token_s=1e-6, kv_read_per_token_s=1e-7, prefill_attn_per_pair_s=1e-9,
                max_num_batched_tokens=8192)
    prompt, out = 20_000, 50
    res = FleetSim([PoolConfig("p", p, 1)]).run(workload([0.0], prompt, out))
    ttft, done = 0.0, 0
    for m in (8192, 8192, prompt - 2 * 8192):  # three chunks of at most the token budget
        ttft += step(m) + 1e-9 * m * (done + m / 2)
        done += m
    # one token per decode step (below the knee: only the floors), the cache growing a token per step
    decode = sum(step(1) + 1e-7 * (prompt + j) for j in range(out - 1))
    assert res.first_token[0] == pytest.approx(ttft, rel=1e-9)
    assert res.finish[0] - res.first_token[0] == pytest.approx(decode, rel=1e-9)
    assert p.step_s(1) == pytest.approx(step(1)) and p.step_s(8192) == pytest.approx(step(8192))


def test_itl_counts_every_token_gap_and_the_stall_a_prefill_chunk_causes() -> None:
    """A request decoding alone, then a 4,000-token prompt arrives: one step carries its chunk, so the
    decoder's gap there is that step's duration, and every other gap is a plain decode step. (Gaps
    count up to the last arrival: a one-token request at 50 s holds the window open.)"""
    p = profile(step_floor_s=0.01, step_per_token_s=1e-5, max_num_batched_tokens=8192)
    res = FleetSim([PoolConfig("p", p, 1)]).run(workload([0.0, 0.1, 50.0], [100, 4000, 10], [200, 2, 1]), warmup=0.0)
    hist = res.pools[0].itl
    # request 0: 199 gaps; request 1: 1 gap (a 2-token answer), the steps' token counts known exactly
    assert hist.total == 199 + 1
    plain, stall = step(1, knee=0, ar0=0, ar=0), step(4001, knee=0, ar0=0, ar=0)
    exact = LatencyHistogram()
    for value in [plain] * 197 + [stall] + [step(2, knee=0, ar0=0, ar=0)] * 2:
        exact.add(value)
    assert hist.quantile(50) == pytest.approx(exact.quantile(50), rel=0.01)
    assert hist.quantile(99.9) == pytest.approx(stall, rel=0.01)


def test_latency_histogram_counts_runs_exactly() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b, k, w = rng.uniform(0.001, 0.05), rng.uniform(0, 1e-4), int(rng.integers(1, 3000)), int(rng.integers(1, 9))
        h = LatencyHistogram()
        h.add_run(a, b, k, w)
        brute = LatencyHistogram()
        for j in range(k):
            brute.add(a + b * j, w)
        assert h.counts == brute.counts and h.total == w * k
        values = np.repeat(a + b * np.arange(k), w)
        assert h.quantile(99) == pytest.approx(float(np.percentile(values, 99)), rel=0.011)


def test_arrival_joins_at_the_next_iteration_boundary() -> None:
    """A decode run of many iterations is one event; an arrival cuts it at the boundary after it."""
    res = FleetSim([PoolConfig("p", profile(step_floor_s=0.01), 1)]).run(
        workload([0.0, 0.0537], 100, [1000, 3]))
    assert res.first_token[0] == pytest.approx(0.01)
    assert res.first_token[1] == pytest.approx(0.07)  # boundary at 0.06, then its prefill iteration
    assert res.finish[1] == pytest.approx(0.09)
    assert res.finish[0] == pytest.approx(10.0)  # 1000 iterations of 10 ms, undisturbed


def long_requests(n: int, seed: int = 0) -> SimWorkload:
    rng = np.random.default_rng(seed)
    return workload(np.cumsum(rng.exponential(0.05, n)), rng.integers(8000, 30000, n), rng.integers(500, 3000, n))


def test_preemption_under_kv_pressure_and_not_without() -> None:
    """64K context with 128 sequences overcommits a 1M-token KV cache (vLLM allows it: blocks are
    allocated as tokens arrive); with 16 sequences the worst case fits and nothing is preempted."""
    wl = long_requests(400)
    tight = profile(max_num_seqs=128, step_floor_s=0.002, max_num_batched_tokens=16384)
    roomy = profile(max_num_seqs=16, step_floor_s=0.002, max_num_batched_tokens=16384)
    over = FleetSim([PoolConfig("p", tight, 1)]).run(wl)
    safe = FleetSim([PoolConfig("p", roomy, 1)]).run(wl)
    assert over.pools[0].preemptions > 0
    assert over.preemptions.sum() == over.pools[0].preemptions
    assert safe.pools[0].preemptions == 0
    for res in (over, safe):
        assert np.all(res.finish >= res.first_token) and not np.isnan(res.finish).any()  # all completed
        assert res.pools[0].free_blocks_at_end == res.pools[0].profile.kv_blocks  # no block leaked
    # a preempted sequence's next token waits for its recompute: the longest gaps are stalls, not steps
    assert over.pools[0].itl.quantile(100) > 10 * over.pools[0].itl.quantile(50)
    assert safe.pools[0].itl.quantile(100) < 10 * safe.pools[0].itl.quantile(50)


def test_over_context_and_queue_cap_reject() -> None:
    p = profile(max_model_len=4096, max_num_seqs=1, max_waiting=2, step_floor_s=0.1)
    res = FleetSim([PoolConfig("p", p, 1)]).run(workload([0.0, 0.0, 0.0, 0.0, 0.0], [100, 5000, 100, 100, 100], 50))
    assert res.rejected.tolist() == [0, OVER_CONTEXT, 0, 0, 2]  # 2: the third waiting request hits the cap


@pytest.mark.parametrize("balancer", [ROUND_ROBIN, JSQ, LEAST_REQUEST])
def test_balancers_spread_load(balancer: str) -> None:
    wl = workload(np.arange(40) * 0.001, 100, [2000, 10] * 20)
    res = FleetSim([PoolConfig("p", profile(), 4, balancer)]).run(wl)
    assert not np.isnan(res.finish).any()
    if balancer == JSQ:  # short jobs finish early, so their instances take more
        assert res.finish.max() < FleetSim([PoolConfig("p", profile(), 4, ROUND_ROBIN)]).run(wl).finish.max() + 1e-9


def test_least_request_is_power_of_two_choices() -> None:
    """Envoy's LEAST_REQUEST: between JSQ (which sees every instance) and round robin on queueing,
    and its random draws come from the run's seed."""
    rng = np.random.default_rng(5)
    n = 6000
    wl = workload(np.cumsum(rng.exponential(1 / 190.0, n)), 50, rng.geometric(1 / 60, n))  # 90 % of capacity
    p = profile(max_num_seqs=4, step_floor_s=0.005)

    def mean_wait(balancer: str, seed: int = 0) -> float:
        res = FleetSim([PoolConfig("p", p, 16, balancer)]).run(wl, seed=seed)
        return float(np.mean((res.first_token - wl.arrival)[n // 10:]))

    jsq, p2c, rr = mean_wait(JSQ), mean_wait(LEAST_REQUEST), mean_wait(ROUND_ROBIN)
    assert jsq < p2c < rr
    assert mean_wait(LEAST_REQUEST, seed=0) == p2c and mean_wait(LEAST_REQUEST, seed=1) != p2c


def cjk_fleet_run(calibration: CalibrationParams) -> tuple[SimWorkload, SimResult, RouterDispatch]:
    rng = np.random.default_rng(3)
    n = 600
    prompt = np.where(np.arange(n) % 2 == 0, rng.integers(500, 1500, n), rng.integers(9000, 12000, n))
    text_bytes = ((prompt - 7) * rng.normal(1.5, 0.05, n)).astype(np.int64)
    # 200 req/s and 0.5 s per response: ~100 requests are routed before the first usage comes back
    wl = workload(np.arange(n) * 0.005, prompt, 100, category="cjk", text_bytes=text_bytes)
    short = profile(max_model_len=8192, max_num_seqs=128, max_num_batched_tokens=16384, step_floor_s=0.005)
    long = profile(step_floor_s=0.005)
    clock = SimClock()
    pressure = InFlightPressure({"short": 4 * 128, "long": 4 * 16}, clock)
    router = BudgetRouter(
        policy=DispatchPolicy(b_short=8192), calibration=calibration, pressure=pressure, clock=clock,
        rng=random.Random(0),
    )
    dispatch = RouterDispatch(router, wl, clock)
    res = FleetSim([PoolConfig("short", short, 4), PoolConfig("long", long, 4)], dispatch).run(wl)
    return wl, res, dispatch


def test_real_router_misroutes_cjk_at_cold_start_and_learns() -> None:
    """The paper's cold start (4.0 bytes/token for every category) halves the token estimate of CJK
    text at ~1.5 bytes/token, so 10K-token CJK prompts look like 4K and go short, where vLLM rejects
    them as over context. Completed requests teach the router the true ratio, and the mistakes stop."""
    wl, res, dispatch = cjk_fleet_run(CalibrationParams(priors=()))
    wrong = (wl.total > 8192) & (res.pool == 0)
    assert wrong[:100].sum() >= 30
    assert wrong[300:].sum() == 0
    assert (res.rejected[wrong] == OVER_CONTEXT).all()
    assert dispatch.router.calibrator.state("cjk").mean == pytest.approx(1.5, rel=0.05)


def test_router_configuration_reaches_the_simulation() -> None:
    """With the shipped per-category priors (CJK starts at 1.5 bytes/token) the same traffic is
    routed right from the first request."""
    wl, res, _ = cjk_fleet_run(CalibrationParams())
    assert not ((wl.total > 8192) & (res.pool == 0)).any()


def spill_run(delay: float | None) -> tuple[SimWorkload, SimResult, RouterDispatch]:
    """10 req/s of short requests onto a short pool that serves 2 req/s (4 slots, 2 s each)."""
    wl = workload(np.arange(80) * 0.1, 100, 200)
    short = profile(max_model_len=8192, max_num_seqs=4, step_floor_s=0.01)
    clock = SimClock()
    capacity = {"short": 4, "long": 64}
    pressure = (
        InFlightPressure(capacity, clock)
        if delay is None
        else LivePressure(capacity, delay + 2 * SCRAPE_INTERVAL_S, clock)
    )
    every = CalibrationParams(converged_sample_rate=1.0)  # every response observed: the local count is exact
    router = BudgetRouter(
        policy=DispatchPolicy(b_short=8192), calibration=every, pressure=pressure, clock=clock, rng=random.Random(0)
    )
    dispatch = RouterDispatch(router, wl, clock, scrape_delay_s=delay)
    res = FleetSim([PoolConfig("short", short, 1), PoolConfig("long", profile(step_floor_s=0.01), 1)], dispatch).run(wl)
    return wl, res, dispatch


def test_live_load_spillover_with_fresh_scrapes_matches_the_exact_count() -> None:
    """Engine load seen at once, plus the router's own sends since the sample, is the exact count."""
    _, exact, d_exact = spill_run(None)
    _, live, d_live = spill_run(0.0)
    assert d_live.spilled.sum() == d_exact.spilled.sum() > 0
    assert (live.pool == exact.pool).all()


def test_stale_scrapes_spill_more_but_never_overfill_the_short_pool() -> None:
    """A late sample misses the completions since, and counts every send since as still there: the
    router over-reads the load and spills more, the price of staleness the planner shows."""
    spilled = []
    for delay in (0.0, 0.5, 2.0):
        wl, res, d = spill_run(delay)
        spilled.append(int(d.spilled.sum()))
        ttft = (res.first_token - wl.arrival)[res.pool == 0]
        assert np.percentile(ttft, 99) < 0.1  # the short pool never queues
    assert spilled[0] < spilled[1] < spilled[2]
