"""Cost model, sizing search, profiles and the ``plan`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from extproc.cli import main
from extproc.planner.capacity import alpha_at, closed_form_saving, instances_for, short_pool_at
from extproc.planner.plan import Planner, PlanSettings
from extproc.planner.profiles import builtin_profiles, load_profile, parse_profile
from extproc.planner.service_levels import Slo, summarise
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


def test_builtin_profiles_hold_the_paper_configurations() -> None:
    assert {"llama3-70b-a100", "qwen3-235b-a22b-fp8-mi300x"} <= set(builtin_profiles())
    llama = load_profile("llama3-70b-a100")
    assert (llama.short.max_model_len, llama.short.max_num_seqs) == (8192, 128)
    assert (llama.long.max_model_len, llama.long.max_num_seqs) == (65536, 16)
    assert llama.short.kv_capacity_tokens == 8192 * 128 == 65536 * 16
    assert llama.long.usd_per_gpu_hour == 2.21 and llama.long.gpus == 8
    qwen = load_profile("qwen3-235b-a22b-fp8-mi300x")
    assert (qwen.short.max_num_seqs, qwen.long.max_num_seqs, qwen.long.max_model_len) == (676, 169, 32768)
    assert qwen.short.usd_per_gpu_hour == 3.67 and qwen.short.gpus == 8
    # KV bytes/token per GPU from the model shape: 2 x 94 layers x 1 KV head x 128 x 1 B
    assert qwen.short.kv_capacity_tokens == pytest.approx(133.4e9 / (2 * 94 * 1 * 128 * 1), rel=0.002)


@pytest.mark.parametrize(("data", "message"), [
    ({"pools": {"short": {}}}, "needs 'short' and 'long'"),
    ({"instance": {"block_size": 16}, "pools": {"short": {}, "long": {}}}, "missing"),
    ("not a mapping", "expected a mapping"),
])
def test_bad_profiles_are_reported(data: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_profile(data, "bad")


def small_workload(seed: int, n: int = 4000, rate: float = 300.0) -> SimWorkload:
    requests = build_workload(WorkloadSpec(trace="azure-conv", rate=rate, count=n, seed=seed))
    return from_requests("azure-conv", requests, MeasuredBytesPerToken(), np.random.default_rng(seed))


def test_a_planned_fleet_meets_its_slos_with_another_seed() -> None:
    """With the roofline A100 profile the long pool is TPOT-bound (prefill chunks stall decodes), so
    its size comes from the SLO search, not from the utilisation floor."""
    slo = Slo(ttft_p99_s=2.0, tpot_p99_s=0.08, util_cap=0.9)
    settings = PlanSettings(load_profile("llama3-70b-a100"), 300.0, slo)
    planner = Planner(settings, small_workload(seed=1))
    report = planner.run([4096], "azure-conv")
    dual = report.thresholds[0].dual
    assert report.homogeneous.feasible and dual.feasible
    assert dual.simulations > 2 and dual.offered_utilisation[1] < 0.85  # the SLO, not the cap, sized it
    assert all(p.meets(slo) for p in dual.pools) and all(p.meets(slo) for p in report.homogeneous.pools)
    fresh = small_workload(seed=2)
    res, _ = planner.simulate_dual(4096, *dual.instances, wl=fresh)
    assert all(p.meets(slo) for p in summarise(res))
    assert summarise(planner.simulate_homogeneous(report.homogeneous.instances[0], wl=fresh))[0].meets(slo)


def test_plan_command_writes_table_json_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan"
    code = main(["plan", "--trace", "azure-code", "--rate", "200", "--requests", "1500", "--profile",
                 "llama3-70b-a100-fleetsim", "--sweep", "2048,8192", "--out", str(out), "--quiet"])
    assert code == 0
    table = capsys.readouterr().out
    assert "B_short" in table and "homog." in table
    data = json.loads((out / "plan.json").read_text())
    assert [t["b_short"] for t in data["thresholds"]] == [2048, 8192]
    assert data["best_b_short"] in (2048, 8192)
    for t in data["thresholds"]:
        assert t["closed_form_saving"] == pytest.approx(t["alpha"] * (1 - 1 / t["rho"]))
    for name in ("cdf.png", "saving.png", "gpus.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("argv", "message"), [
    (["--trace", "nope.csv"], "not found"),
    (["--trace", "azure-code", "--profile", "no-such-profile"], "unknown profile"),
    (["--trace", "azure-code", "--rate", "10", "--requests", "5"], "at least 100"),
    (["--trace", "azure-code", "--rate", "10", "--sweep", "0,8192"], "positive"),
    ([], "--trace is required"),
])
def test_plan_command_rejects_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main(["plan", "--quiet", *argv])
    except SystemExit as exc:  # argparse's own errors exit 2 with usage
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
