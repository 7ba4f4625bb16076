"""Equal GPUs under overload: where, if anywhere, do preemptions appear?

The paper's reliability claim (preemptions 47.3 ‰ homogeneous vs 8.7 ‰ dual, at 90 % aggregate
utilisation) needs KV pressure. ``budget-router plan`` compares both sides at one fleet size, the
homogeneous fleet's (sized to the SLOs), where we find no preemption. This script pushes further: it
reads a plan.json, rebuilds that plan's workload (trace, rate, requests, first seed) and runs both sides
with the configurations the plan chose at fractions of the homogeneous fleet's GPUs (the dual fleet
split as it was sized, as in the plan's equal-GPU runs), so a fraction below 1 is an overload. It prints
fleet-wide P99 TTFT / TPOT / ITL, preemptions per 1,000 requests, requests preempted at least once
and rejections, per provisioning (tuned: on-demand KV with max_num_seqs above the worst case, so it
can preempt; paper: worst-case reservation, which cannot).

Below a fraction of about 0.9 / utilisation the queues grow for the whole run, so the P99s are those
of a run of this length, not of a steady state: read them as "how bad", not as figures to size by.

    python benchmarks/planner_overload.py out/plan/plan.json [--fractions 1,0.8,0.6,0.4,0.2]
        [--requests N] [--provisioning tuned]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from extproc.planner.plan import Planner, PlanSettings, configured, split_gpus
from extproc.planner.profiles import load_profile
from extproc.planner.service_levels import fleet_percentiles
from extproc.planner.sim_workload import MeasuredBytesPerToken, from_requests
from extproc.planner.tuning import Candidate
from extproc.workload.spec import WorkloadSpec, build_workload


def _candidate(cfg: dict[str, Any]) -> Candidate:
    return Candidate(int(cfg["max_num_seqs"]), int(cfg["max_num_batched_tokens"]))


def _pick(comp: dict[str, Any], thresholds: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The plan's pick, else the cheapest threshold whose dual fleet was sized."""
    sized = [t for t in thresholds if t["dual"]["pools"] and t["dual"]["feasible"]]
    best = [t for t in sized if t["b_short"] == comp["best_b_short"]]
    return (best or sorted(sized, key=lambda t: t["dual"]["gpus"]) or [None])[0]


def _row(fraction: float, gpus: int, side: str, instances: str, fleet: dict[str, float], seconds: float) -> str:
    return (
        f"  {fraction:>8.2f}{gpus:>7}  {side:<6}{instances:>10}{fleet['ttft_p99_s']:>9.2f}"
        f"{1000 * fleet['tpot_p99_s']:>8.0f}"
        f"{1000 * fleet['itl_p99_s']:>7.0f}{fleet['preemptions_per_1k']:>12.2f}{fleet['preempted_requests']:>10}"
        f"{fleet['rejected']:>6}{seconds:>7.0f} s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("plan", type=Path, help="a plan.json written by budget-router plan")
    ap.add_argument("--fractions", default="1,0.8,0.6,0.4,0.2", help="fleet sizes as fractions of the homogeneous")
    ap.add_argument("--requests", type=int, default=None, help="requests per run (default: the plan's)")
    ap.add_argument("--provisioning", action="append", help="tuned and/or paper (default: all in the plan)")
    args = ap.parse_args()
    data = json.loads(args.plan.read_text())
    st = data["settings"]
    seed = st["seeds"][0]
    profile = load_profile(st["profile"])
    n = args.requests or data["requests"]
    # the CLI's workload for its first replication (the plan's other workload options are not in plan.json)
    spec = WorkloadSpec(trace=data["trace"], rate=st["rate"], count=n, seed=seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    wl = from_requests(data["trace"], build_workload(spec), MeasuredBytesPerToken(), rng)
    settings = PlanSettings(
        profile,
        st["rate"],
        warmup=st["warmup"],
        balancer=st["balancer"],
        homogeneous_balancer=st["homogeneous_balancer"],
        seed=seed,
    )
    planner = Planner(settings, wl)
    fractions = [float(f) for f in args.fractions.split(",") if f.strip()]
    rep = data["replicates"][0]
    print(f"{data['trace']} @ {st['rate']:g} req/s, {len(wl):,} requests (seed {seed}), profile {st['profile']}")
    for prov in args.provisioning or list(data["comparisons"]):
        homog = rep["homogeneous"][prov]
        t = _pick(data["comparisons"][prov], rep["thresholds"][prov])
        if t is None or not homog["feasible"]:
            print(f"{prov}: no sized homogeneous and dual fleet in the plan to compare")
            continue
        b = t["b_short"]
        h_prof = configured(profile, "homogeneous", None, _candidate(homog["configs"][0]))
        roles = ("short", "long")
        pools = [configured(profile, r, b, _candidate(c)) for r, c in zip(roles, t["dual"]["configs"], strict=True)]
        print(
            f"\n{prov}: homogeneous {h_prof.max_num_seqs}x{h_prof.max_num_batched_tokens} (worst case "
            f"{h_prof.worst_case_seqs}) vs B_short={b}: short {pools[0].max_num_seqs}x{pools[0].max_num_batched_tokens}"
            f" (worst case {pools[0].worst_case_seqs}), long {pools[1].max_num_seqs}x{pools[1].max_num_batched_tokens}"
            f"; sized at {homog['gpus']:,} GPUs homogeneous"
        )
        print(
            f"  {'fraction':>8}{'GPUs':>7}  {'side':<6}{'instances':>10}{'TTFT99':>9}{'TPOT99':>8}{'ITL99':>7}"
            f"{'preempt/1k':>12}"
            f"{'preempted':>10}{'rej':>6}{'wall':>9}"
        )
        for f in fractions:
            gpus = max(1, round(f * homog["gpus"]))
            n_h = max(1, gpus // h_prof.gpus)
            t0 = time.perf_counter()
            fh = fleet_percentiles(planner.simulate_homogeneous(n_h, h_prof))
            print(_row(f, n_h * h_prof.gpus, "homog", str(n_h), fh, time.perf_counter() - t0), flush=True)
            n_s, n_l = split_gpus(n_h * h_prof.gpus, t["dual"]["pool_gpus"], [p.gpus for p in pools])
            t0 = time.perf_counter()
            fd = fleet_percentiles(planner.simulate_dual(b, n_s, n_l, pools)[0])
            dual_gpus = n_s * pools[0].gpus + n_l * pools[1].gpus
            print(_row(f, dual_gpus, "dual", f"{n_s}+{n_l}", fd, time.perf_counter() - t0), flush=True)


if __name__ == "__main__":
    main()
