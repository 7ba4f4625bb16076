"""How long a default ``budget-router plan`` takes: 100,000 requests per seed, the default search.

Target (issue 26): a 100,000-request plan with the default search (tuned configurations, three
replications, equal-GPU runs, sensitivity, Erlang check) in under 10 minutes on the 2-core
development machine. Each case runs the real CLI in a child process (its default worker count: the
CPUs it may use) and prints its wall time, the CPU time it used, and the plan's answer, so a speed
change that moves the answer shows here too. Run it on a quiet machine: wall time on a shared one
measures the other tenants as much as the planner (the CPU column is steadier).

    python benchmarks/planner_speed.py [--trace azure-both] [--rate 1000] [--requests 100000]
        [--sweep 8192] [--jobs N] [-- extra plan options]

Compare two commits side by side with ``farm-bench`` on this script in each checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_S = 600.0


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_case(trace: str, rate: float, requests: int, sweep: str | None, jobs: int | None, extra: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="plan-bench-") as tmp:
        out = Path(tmp) / "plan"
        cmd = [sys.executable, "-m", "extproc.cli", "plan", "--trace", trace, "--rate", f"{rate:g}",
               "--requests", str(requests), "--out", str(out), "--quiet", *extra]
        if sweep:
            cmd += ["--sweep", sweep]
        if jobs:
            cmd += ["--jobs", str(jobs)]
        cpu0, t0 = _cpu_children(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wall, cpu = time.perf_counter() - t0, _cpu_children() - cpu0
        if proc.returncode != 0:
            print(f"{trace}: plan failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
            return
        data = json.loads((out / "plan.json").read_text())
    comp = data["comparisons"][data["primary"]]
    best = comp["best_b_short"]
    sized = [v for v in comp["verdicts"] if v["saving"] is not None]
    saving = "no threshold sized"
    if sized:  # the pick, else the best saving there was (a split that does not pay is an answer too)
        v = next((v for v in sized if v["b_short"] == best), max(sized, key=lambda v: v["saving"]["mean"]))
        s = v["saving"]
        saving = f"{100 * s['mean']:.1f} % ({100 * s['min']:.1f}..{100 * s['max']:.1f}) at B_short={v['b_short']}"
        if best is None:
            saving += " (no pick)"
    sims = sum(
        t["dual"]["simulations"] for r in data["replicates"] for ts in r["thresholds"].values() for t in ts
    ) + sum(h["simulations"] for r in data["replicates"] for h in r["homogeneous"].values())
    print(
        f"{trace:<22} {requests:>8,} req x {data['replications']} seeds  wall {wall / 60:5.1f} min  CPU "
        f"{cpu / 60:5.1f} min  ({'OK' if wall <= TARGET_S else 'OVER'} vs {TARGET_S / 60:.0f} min)  "
        f"sizing sims {sims}  homogeneous {comp['homogeneous_gpus']['mean']:.0f} GPUs  saving {saving}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", action="append", help="trace(s) to plan (default azure-both)")
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--sweep", default=None, help="B_short values (default: the plan's default, one threshold)")
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: the plan's default)")
    ap.add_argument("extra", nargs="*", help="more plan options, after --")
    args = ap.parse_args()
    print(f"planner speed: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for trace in args.trace or ["azure-both"]:
        run_case(trace, args.rate, args.requests, args.sweep, args.jobs, args.extra)


if __name__ == "__main__":
    main()
