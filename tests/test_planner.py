"""Cost model, sizing search, profiles and the ``plan`` command."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

import extproc
from extproc.cli import main
from extproc.planner.capacity import alpha_at, closed_form_saving, erlang_c, instances_for, short_pool_at
from extproc.planner.fleet import LEAST_REQUEST, ROUND_ROBIN
from extproc.planner.plan import (
    PAPER,
    TUNED,
    Planner,
    PlanSettings,
    Spread,
    ThresholdVerdict,
    _binding,
    choose,
    plan,
)
from extproc.planner.plots import saving_figure
from extproc.planner.profiles import builtin_profiles, load_profile, parse_profile
from extproc.planner.service_levels import TPOT, TTFT, UTILISATION, Slo, summarise
from extproc.planner.sim_progress import ProgressBar
from extproc.planner.sim_workload import MeasuredBytesPerToken, SimWorkload, from_requests
from extproc.planner.sizing import size_pools
from extproc.workload.spec import WorkloadSpec, build_workload


def test_closed_form_is_the_hand_arithmetic() -> None:
    assert closed_form_saving(0.8, 4.0) == 0.8 * (1 - 1 / 4.0) == pytest.approx(0.6)
    assert closed_form_saving(0.5, 2.0) == 0.25
    assert closed_form_saving(1.0, 1.0) == 0.0
    assert closed_form_saving(0.9, 0.5) == pytest.approx(-0.9)  # a slower short pool costs GPUs
    # the derivation: G_h = λ/μ, G_d = αλ/(ρμ) + (1-α)λ/μ
    lam, mu, alpha, rho = 1000.0, 2.8, 0.8, 4.0
    g_h, g_d = lam / mu, alpha * lam / (rho * mu) + (1 - alpha) * lam / mu
    assert 1 - g_d / g_h == pytest.approx(closed_form_saving(alpha, rho))
    with pytest.raises(ValueError):
        closed_form_saving(1.5, 2.0)
    with pytest.raises(ValueError):
        closed_form_saving(0.5, 0.0)


def test_alpha_and_instance_floor() -> None:
    totals = np.array([100, 2048, 2049, 9000])
    assert alpha_at(totals, 2048) == 0.5
    assert instances_for(1000.0, 2.8, 1.0) == 358  # the paper's homogeneous count: ceil(1000 / 2.8)
    assert instances_for(1000.0, 2.8, 0.9) == 397
    assert instances_for(0.0, 2.8, 0.9) == 0


def test_short_pool_keeps_the_kv_budget_when_b_short_moves() -> None:
    short = load_profile("llama3-70b-a100").short
    assert short_pool_at(short, 8192) is short
    assert short_pool_at(short, 16384).max_num_seqs == 64
    assert short_pool_at(short, 2048).max_num_seqs == 512


def test_sizing_brackets_then_bisects() -> None:
    need = (371, 5)
    calls: list[tuple[int, ...]] = []

    def check(sizes: tuple[int, ...]) -> list[bool]:
        calls.append(sizes)
        return [sizes[0] >= need[0], sizes[1] >= need[1]]

    result = size_pools(check, (200, 2), tolerance=0.0)
    assert result.feasible and result.sizes == need
    assert len(calls) <= 2 * (np.log2(371) + 2)  # logarithmic, not a linear walk
    assert size_pools(lambda s: [True], (7,)).sizes == (7,)  # the utilisation floor already passes
    stuck = size_pools(lambda s: [False], (10,))
    assert not stuck.feasible and "still misses" in stuck.reason
    # from an estimate above the answer: probes downwards, never below the floor
    calls.clear()
    result = size_pools(check, (400, 9), floor=(100, 1), tolerance=0.0)
    assert result.feasible and result.sizes == need and len(calls) <= 12
    assert all(c[0] >= 100 and c[1] >= 1 for c in calls)
    assert size_pools(lambda s: [True], (50,), floor=(40,)).sizes == (40,)


def test_builtin_profiles_hold_the_paper_configurations() -> None:
    assert {"llama3-70b-a100", "llama3-70b-a100-roofline", "qwen3-235b-a22b-fp8-mi300x"} <= set(builtin_profiles())
    llama = load_profile("llama3-70b-a100")
    assert (llama.short.max_model_len, llama.short.max_num_seqs) == (8192, 128)
    assert (llama.long.max_model_len, llama.long.max_num_seqs) == (65536, 16)
    assert llama.short.kv_capacity_tokens == 8192 * 128 == 65536 * 16
    assert llama.long.worst_case_seqs == 16 and llama.short.worst_case_seqs == 128
    assert llama.long.usd_per_gpu_hour == 2.21 and llama.long.gpus == 8
    qwen = load_profile("qwen3-235b-a22b-fp8-mi300x")
    assert (qwen.short.max_num_seqs, qwen.long.max_num_seqs, qwen.long.max_model_len) == (676, 169, 32768)
    assert qwen.short.usd_per_gpu_hour == 3.67 and qwen.short.gpus == 8
    # KV bytes/token per GPU from the model shape: 2 x 94 layers x 1 KV head x 128 x 1 B
    assert qwen.short.kv_capacity_tokens == pytest.approx(133.4e9 / (2 * 94 * 1 * 128 * 1), rel=0.002)
    for name in builtin_profiles():  # every profile says what its step costs come from
        assert load_profile(name).fitted_to
    assert "Vidur" in llama.fitted_to and load_profile("llama3-70b-a100-roofline").fitted_to.startswith("not fitted")


@pytest.mark.parametrize(("data", "message"), [
    ({"fitted_to": "x", "pools": {"short": {}}}, "needs 'short' and 'long'"),
    ({"fitted_to": "x", "instance": {"block_size": 16}, "pools": {"short": {}, "long": {}}}, "missing"),
    ({"instance": {}, "pools": {"short": {}, "long": {}}}, "fitted_to"),
    ({"fitted_to": "x", "instance": {"iter_fixed_s": 0.01}, "pools": {"short": {}, "long": {}}},
     "iter_fixed_s -> step_floor_s"),
    ("not a mapping", "expected a mapping"),
])
def test_bad_profiles_are_reported(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_profile(data, "bad")


def small_workload(seed: int, n: int = 4000, rate: float = 300.0, trace: str = "azure-conv") -> SimWorkload:
    requests = build_workload(WorkloadSpec(trace=trace, rate=rate, count=n, seed=seed))
    return from_requests(trace, requests, MeasuredBytesPerToken(), np.random.default_rng(seed))


def quick(profile: str = "llama3-70b-a100", rate: float = 300.0, **over: object) -> PlanSettings:
    """Settings for a test-sized plan: short screening runs, small pools judged in the fleet run."""
    base = {"screen_requests": 1000, "min_confident_requests": 300, "erlang": False, "sensitivity": False,
            "equal_gpus": False}
    return PlanSettings(load_profile(profile), rate, **{**base, **over})  # type: ignore[arg-type]


def test_a_planned_fleet_meets_its_slos_with_another_seed() -> None:
    """The paper's configurations on the roofline A100 profile: in the long pool prefill chunks stall
    decodes, so its size comes from the SLO search, not from the utilisation floor."""
    slo = Slo(ttft_p99_s=2.0, tpot_p99_s=0.08, util_cap=0.9)
    settings = quick("llama3-70b-a100-roofline", slo=slo, baselines=(PAPER,))
    planner = Planner(settings, small_workload(seed=1))
    homog = planner.size(PAPER, None, [settings.profile.long])[0]
    profiles = [short_pool_at(settings.profile.short, 4096), settings.profile.long]
    t = planner.threshold(PAPER, 4096, profiles)
    dual = t.dual
    assert homog.feasible and dual.feasible and homog.fleet_meets_slo and dual.fleet_meets_slo
    assert dual.simulations > 2 and dual.offered_utilisation[1] < 0.85 and dual.binding[1] != UTILISATION
    # every pool meets the SLO where it was judged: in the fleet run, or (too few requests there) on its own stream
    assert all((own or p).meets(slo) for p, own in zip(dual.pools, dual.own_stream, strict=True))
    assert all(p.meets(slo) for p in homog.pools)
    fresh = small_workload(seed=2)
    res, _ = planner.simulate_dual(4096, *dual.instances, profiles=profiles, wl=fresh)
    assert all(p.meets(slo) for p, own in zip(summarise(res), dual.own_stream, strict=True) if own is None)
    assert summarise(planner.simulate_homogeneous(homog.instances[0], wl=fresh))[0].meets(slo)


def test_plan_command_writes_table_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan"
    code = main(["plan", "--trace", "azure-code", "--rate", "100", "--requests", "1500", "--profile",
                 "llama3-70b-a100-fleetsim", "--sweep", "2048,8192", "--out", str(out), "--quiet",
                 "--replications", "1", "--baseline", "both", "--screen-requests", "1000", "--jobs", "1",
                 "--chunks", "512,2048,8192", "--max-seqs", "256"])
    assert code == 0
    table = capsys.readouterr().out
    assert "B_short" in table and "homog." in table and "like-for-like" in table and "Vidur" not in table
    assert "tuned (searched" in table and "paper (worst-case" in table and "Equal GPUs" in table
    assert "Sensitivity at B_short=" in table and "What moves the answer" in table
    assert "Simulator vs Erlang C" in table and "P99 TPOT (per-request mean) <= 80 ms" in table
    data = json.loads((out / "plan.json").read_text())
    assert data["version"] == extproc.__version__ and data["settings"]["baseline"] == "like-for-like"
    assert data["settings"]["balancer"] == LEAST_REQUEST and data["primary"] == TUNED
    assert set(data["comparisons"]) == {TUNED, PAPER} and data["settings"]["fitted_to"].startswith("not fitted")
    for comp in data["comparisons"].values():
        assert [v["b_short"] for v in comp["verdicts"]] == [2048, 8192]
        assert comp["best_b_short"] in (None, 2048, 8192)
    # Erlang C holds where slot waits dwarf one step (the simulator admits at step boundaries)
    checks = data["erlang_c_check"]
    assert any(e["comparable"] for e in checks)
    assert all(abs(e["p_wait_error"]) < 0.25 for e in checks if e["comparable"])
    chosen = data["tuning"]["homogeneous"]["chosen"]
    assert chosen["max_num_seqs"] in data["tuning"]["homogeneous"]["grid"]["max_num_seqs"]
    assert data["tuning"]["homogeneous"]["grid"]["max_num_batched_tokens"] == [512, 2048, 8192]
    rows = data["sensitivity"]["rows"]
    assert rows[0]["knob"] == "plan (screened)" and {"balancer (both sides)", "provisioning (both sides)",
                                                      "P99 TPOT SLO", "decode SLO"} <= {r["knob"] for r in rows}
    rep = data["replicates"][0]
    homog = rep["homogeneous"][TUNED]
    assert homog["configs"][0]["max_num_seqs"] == chosen["max_num_seqs"]
    assert rep["homogeneous"][PAPER]["configs"][0]["max_num_seqs"] == 16  # the worst case at 64K
    assert homog["usd_per_million_tokens"] > 0 and homog["cdf"]["quantiles"][-1] == 99.9
    assert {"itl_p99_s", "tpot_p99_s", "ttft_p99_s", "preemptions"} <= set(homog["fleet"])
    for t in rep["thresholds"][TUNED]:
        if t["dual"]["pools"]:
            assert t["closed_form_saving"] == pytest.approx(t["alpha"] * (1 - 1 / t["rho"]))
            assert len(t["dual"]["binding"]) == 2
            # one rejected count, after the warm-up, wherever it appears
            assert t["rejected"] == t["dual"]["fleet"]["rejected"] == sum(
                p["rejected_over_context"] + p["rejected_queue_full"] for p in t["dual"]["pools"])
        assert (t["disqualified"] == "") == t["qualified"]
    for e in rep["equal_gpu"]:
        assert sum(e["dual_instances"]) * 1 <= e["gpus"] == sum(e["homogeneous_instances"])
    for name in ("cdf.png", "saving.png", "gpus.png", "latency.png", "sensitivity.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def csv_trace(path: Path, rows: list[tuple[str, int, int]]) -> str:
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{t},{p},{o}\n" for t, p, o in rows))
    return str(path)


def stamp(i: int) -> str:
    return f"2023-11-16 18:{15 + i // 600:02d}:{i // 10 % 60:02d}.{i % 10}000000"


@pytest.mark.parametrize(("rows", "extra", "message"), [
    # identical timestamps and no --rate: an infinite rate would need an unbounded fleet
    ([("2023-11-16 18:15:00.0000000", 1000, 100)] * 300, [], "give --rate"),
    ([(stamp(i), 70_000, 100) for i in range(300)], ["--rate", "20"], "no request of the trace fits"),
])
def test_plan_refuses_traces_it_cannot_size(tmp_path: Path, rows: list[tuple[str, int, int]], extra: list[str],
                                           message: str, capsys: pytest.CaptureFixture[str]) -> None:
    trace = csv_trace(tmp_path / "t.csv", rows)
    code = main(["plan", "--quiet", "--trace", trace, "--profile", "llama3-70b-a100-fleetsim", "--requests", "300",
                 "--replications", "1", "--out", str(tmp_path / "o"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "NaN" not in err


def test_a_huge_rate_is_refused_before_it_exhausts_memory(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["plan", "--quiet", "--trace", "azure-code", "--rate", "1e7", "--requests", "1000",
                 "--replications", "1", "--out", str(tmp_path)])
    assert code == 2
    assert "--max-instances 20,000" in capsys.readouterr().err


def test_an_all_long_trace_reports_nothing_to_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = csv_trace(tmp_path / "long.csv", [(stamp(i), 20_000, 100) for i in range(300)])
    code = main(["plan", "--quiet", "--trace", trace, "--profile", "llama3-70b-a100-fleetsim", "--rate", "20",
                 "--requests", "1000", "--replications", "1", "--sweep", "2048,8192", "--out", str(tmp_path / "o"),
                 "--screen-requests", "1000"])
    assert code == 0
    table = capsys.readouterr().out
    assert "not splittable: the router sends no request short" in table and "no pick" in table
    data = json.loads((tmp_path / "o" / "plan.json").read_text())
    assert data["best_b_short"] is None
    assert not any(v["qualified"] for v in data["comparisons"][TUNED]["verdicts"])


def test_a_split_dearer_than_the_baseline_is_not_the_pick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """At a trickle one homogeneous instance suffices; any split needs two (a -100 % saving)."""
    trace = csv_trace(tmp_path / "t.csv", [(stamp(i), 1000 if i % 2 else 12_000, 100) for i in range(300)])
    code = main(["plan", "--quiet", "--trace", trace, "--profile", "llama3-70b-a100-fleetsim", "--rate", "0.5",
                 "--requests", "400", "--replications", "1", "--out", str(tmp_path / "o"), "--screen-requests",
                 "1000", "--no-sensitivity"])
    assert code == 0
    table = capsys.readouterr().out
    assert "-100.0%" in table and "PICK" not in table and "cheapest meeting" not in table
    assert "no split pays off" in table


def test_a_bad_out_path_fails_before_any_simulation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # checked before the trace is even read (a missing trace would be reported otherwise), so long before
    # any simulation
    code = main(["plan", "--quiet", "--trace", str(tmp_path / "missing.csv"), "--rate", "100", "--out", str(blocker)])
    assert code == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and "not found" not in err
    code = main(["plan", "--quiet", "--trace", "azure-code", "--rate", "100", "--out", str(blocker / "sub")])
    assert code == 2 and "cannot create the folder" in capsys.readouterr().err


def test_plots_mark_the_pick_and_the_disqualified() -> None:
    settings = quick("llama3-70b-a100-fleetsim", baselines=(PAPER,))
    rep = plan(settings, [(0, small_workload(seed=0, n=1500))], [2048, 8192], "azure-conv")
    comp = rep.comparisons[PAPER]
    comp.verdicts[0].qualified, comp.verdicts[0].reason = False, "SLO not met: test"
    comp.best = 1
    fig = saving_figure(rep)
    markers = {line.get_marker(): list(line.get_xdata()) for line in fig.axes[0].get_lines()}
    assert markers["*"] == [8192] and markers["x"] == [2048]


@pytest.mark.parametrize(("argv", "message"), [
    (["--trace", "nope.csv"], "not found"),
    (["--trace", "azure-code", "--profile", "no-such-profile"], "unknown profile"),
    (["--trace", "azure-code", "--rate", "10", "--requests", "5"], "between 100"),
    (["--trace", "azure-code", "--rate", "10", "--replications", "0"], "--replications"),
    (["--trace", "azure-code", "--rate", "nan"], "--rate"),
    (["--trace", "azure-code", "--rate", "10", "--sweep", "0,8192"], "positive"),
    (["--trace", "azure-code", "--rate", "10", "--chunks", "512,x"], "--chunks"),
    (["--trace", "azure-code", "--rate", "10", "--chunks", "8"], "at least 16"),
    (["--trace", "azure-code", "--rate", "10", "--slo-tpot-p99", "-1"], "--slo-tpot-p99"),
    (["--trace", "azure-code", "--rate", "10", "--slo-itl-p99", "soon"], "--slo-itl-p99"),
    (["--trace", "azure-code", "--rate", "10", "--baseline", "best"], "--baseline"),
    (["--trace", "azure-code", "--rate", "10", "--balancer", "least_outstanding"], "--balancer"),
    (["--trace", "azure-code", "--rate", "10", "--jobs", "0"], "--jobs"),
    (["--trace", "azure-code", "--rate", "10", "--max-seqs", "0"], "--max-seqs"),
    (["--trace", "azure-code", "--rate", "10", "--screen-requests", "10"], "--screen-requests"),
    ([], "--trace is required"),
])
def test_plan_command_rejects_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["plan", "--quiet", *argv])
    except SystemExit as exc:  # argparse's own errors exit 2 with usage
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err


def test_cli_defaults_are_the_settings_defaults() -> None:
    """One source for every default (issue 21 found the SLO defaults written twice)."""
    import argparse

    from extproc.commands.plan import OPTIONS, add_arguments, prepare

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run = prepare(OPTIONS.from_args(parser.parse_args(["--trace", "azure-conv", "--jobs", "1"]), env={}))
    defaults = PlanSettings(run.settings.profile, run.settings.rate)
    assert run.settings == dataclasses.replace(defaults, config=run.settings.config)
    assert run.settings.slo == Slo()


# --- like for like, binding limits, honest uncertainty ----------------------------------------------

def test_the_baseline_is_balanced_like_the_pools_unless_asked() -> None:
    profile = load_profile("llama3-70b-a100-fleetsim")
    same = PlanSettings(profile, 100.0)
    assert same.baseline_balancer == same.balancer == LEAST_REQUEST and same.like_for_like
    assert same.as_dict()["baseline"] == "like-for-like"
    mixed = PlanSettings(profile, 100.0, homogeneous_balancer=ROUND_ROBIN)
    assert not mixed.like_for_like and mixed.as_dict()["baseline"].startswith("MISMATCHED")
    with pytest.raises(ValueError, match="unknown balancer"):
        PlanSettings(profile, 100.0, balancer="least_outstanding")
    planner = Planner(same, small_workload(seed=0, n=500))
    res = planner.simulate_homogeneous(3)
    assert res.pools[0].name == "homogeneous"
    assert summarise(res)[0].requests > 0


def test_binding_limit_is_what_failed_one_step_smaller() -> None:
    trials = {(10, 2): [(TTFT,), ()], (12, 2): [(TPOT,), ()], (14, 2): [(), ()]}
    assert _binding(trials, (14, 2), True, "") == [TPOT, UTILISATION]
    assert _binding({(5,): [()]}, (5,), True, "") == [UTILISATION]
    assert _binding({(9,): [(TTFT, TPOT)]}, (9,), False, "pool 0 still misses") == ["TTFT+TPOT"]
    assert _binding({}, (9,), False, "P99 TTFT floor 7 s: prefill") == ["P99 TTFT floor 7 s"]


def verdict(b: int, usd: tuple[float, ...], qualified: bool = True) -> ThresholdVerdict:
    return ThresholdVerdict(b, qualified, "" if qualified else "SLO not met", Spread(usd), Spread(usd), None)


def test_a_pick_must_beat_the_others_by_more_than_the_spread() -> None:
    homog = Spread((100.0, 104.0))
    # 8K is cheaper on average, but by less than the 16K/8K ranges: a tie, and the smaller B_short wins
    v = [verdict(8192, (80.0, 84.0)), verdict(16384, (79.0, 83.0)), verdict(4096, (60.0, 61.0), qualified=False)]
    best, tied, note = choose(v, homog)
    assert best == 0 and tied == [1] and "tie" in note
    # far apart: the cheaper one, no tie
    best, tied, note = choose([verdict(8192, (80.0, 81.0)), verdict(16384, (70.0, 71.0))], homog)
    assert best == 1 and tied == [] and note == "cheapest meeting the SLOs"
    # a split dearer than the homogeneous fleet (a -100 % "saving") is never picked
    best, tied, note = choose([verdict(8192, (200.0,))], Spread((100.0,)))
    assert best is None and "no split pays off" in note
    assert choose([verdict(8192, (50.0,), qualified=False)], homog)[0] is None


def test_adding_a_threshold_to_the_sweep_changes_no_other_result() -> None:
    settings = quick("llama3-70b-a100-fleetsim", baselines=(PAPER,))
    wl = small_workload(seed=3, n=2000)
    alone = plan(settings, [(3, wl)], [8192], "t").replicates[0]
    swept = plan(settings, [(3, wl)], [2048, 8192], "t").replicates[0]

    def same(a: object, b: object) -> bool:  # NaN (a pool's empty percentile) != NaN, but dumps alike
        return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)

    assert same(swept.thresholds[PAPER][1].as_dict(), alone.thresholds[PAPER][0].as_dict())
    assert same(swept.homogeneous[PAPER].as_dict(), alone.homogeneous[PAPER].as_dict())
    assert not same(swept.thresholds[PAPER][0].as_dict(), alone.thresholds[PAPER][0].as_dict())  # it can fail


def test_erlang_c_is_the_textbook_sum() -> None:
    c, a = 3, 2.0
    head = sum(a**k / math.factorial(k) for k in range(c))
    tail = a**c / math.factorial(c) * c / (c - a)
    assert erlang_c(c, a) == pytest.approx(tail / (head + tail))
    assert erlang_c(5000, 4900.0) < 1.0  # no overflow at fleet scale
    probs = [erlang_c(n, 30.0) for n in range(31, 60)]
    assert all(b <= a for a, b in itertools.pairwise(probs))


def test_a_pool_with_few_requests_is_held_to_the_same_slo_on_a_longer_stream() -> None:
    """azure-conv at 4K sends a few % of requests long: too few for a P99 in the fleet run. The pool
    gets no pass: it is judged on a run of its own traffic with enough requests, flagged low-confidence."""
    settings = quick("llama3-70b-a100-fleetsim", baselines=(PAPER,), min_confident_requests=1000)
    wl = small_workload(seed=4, n=3000)
    planner = Planner(settings, wl)
    profiles = [short_pool_at(settings.profile.short, 4096), settings.profile.long]
    t = planner.threshold(PAPER, 4096, profiles)
    long = t.dual.pools[1]
    assert 0 < long.requests < 1000 and t.dual.low_confidence == [False, True]
    assert t.dual.judged_on[0] == "fleet run" and t.dual.judged_on[1].startswith("own stream of 1,112 requests")
    own = t.dual.own_stream[1]
    assert own is not None and own.requests >= 1000 and own.meets(settings.slo)
    # and it is the size that pool needs on that stream: one fewer instance misses (or is the floor)
    n_long = t.dual.instances[1]
    if n_long > 1:
        res = planner.simulate([profiles[1]], [n_long - 1], 4096, planner.own_stream("long", 4096), pool_only=True)[0]
        floor = instances_for(settings.rate * planner.share("long", 4096), t.mu_long, settings.slo.util_cap)
        assert not summarise(res)[0].meets(settings.slo) or n_long - 1 < floor


def test_replications_report_their_spread() -> None:
    settings = quick("llama3-70b-a100-fleetsim", baselines=(PAPER,))
    workloads = [(s, small_workload(seed=s, n=1500)) for s in (0, 1)]
    rep = plan(settings, workloads, [8192], "azure-conv")
    assert len(rep.replicates) == 2 and rep.settings["seeds"] == [0, 1]
    v = rep.comparisons[PAPER].verdicts[0]
    assert v.gpus.values == tuple(float(r.thresholds[PAPER][0].dual.gpus) for r in rep.replicates)
    homog = rep.comparisons[PAPER].homogeneous_gpus
    assert homog.lo <= homog.mean <= homog.hi
    if v.saving is not None:
        assert v.saving.values == tuple(r.thresholds[PAPER][0].saving for r in rep.replicates)


def test_worker_processes_give_the_same_plan() -> None:
    settings = quick("llama3-70b-a100-fleetsim", equal_gpus=True)
    workloads = [(s, small_workload(seed=s, n=1200, rate=100.0)) for s in (0, 1)]
    one = plan(settings, workloads, [8192], "t")
    two = plan(dataclasses.replace(settings, jobs=2), workloads, [8192], "t")
    dump = lambda r: json.dumps(r.as_dict(), sort_keys=True, default=str)  # noqa: E731
    assert dump(one) == dump(two)


def test_equal_gpus_give_the_dual_fleet_the_homogeneous_fleets_gpus() -> None:
    settings = quick("llama3-70b-a100-fleetsim", baselines=(PAPER,), equal_gpus=True)
    rep = plan(settings, [(0, small_workload(seed=0, n=1500))], [4096], "t")
    r0 = rep.replicates[0]
    (e,) = r0.equal_gpu
    homog, dual = r0.homogeneous[PAPER], r0.thresholds[PAPER][0].dual
    assert e.gpus == homog.gpus and sum(e.dual_instances) == e.gpus  # one GPU per instance in this profile
    assert e.dual_instances[0] / sum(e.dual_instances) == pytest.approx(dual.pool_gpus[0] / dual.gpus, abs=0.05)
    assert e.homogeneous == homog.fleet and e.dual["requests"] == homog.fleet["requests"]


def test_progress_projects_an_eta_from_the_weight_done() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(stream, clock=lambda: now[0])
    bar.plan("stage", 3, 30.0)
    for k in range(2):
        bar.sim(f"sim {k}")
        now[0] += 10.0
        bar.task_done(f"task {k}", 10.0)
    assert bar.eta() == pytest.approx(10.0)
    bar.close()
    log = stream.getvalue()
    assert "task 2/3, 2 simulations, 20s elapsed, ETA 10s: task 1" in log and "2 simulations, 2 tasks in 20s" in log
