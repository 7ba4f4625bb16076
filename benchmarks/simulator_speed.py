"""How fast the fleet simulator runs: 100,000 Azure requests at 1,000 req/s on one core.

Target (issue 6): <= 20 s. Prints the wall time of the simulation alone (workload building and
the router's per-request work included, since the real router is in the loop) for the homogeneous
baseline and for a dual-pool fleet.

    python benchmarks/simulator_speed.py [--requests 100000] [--rate 1000] [--profile llama3-70b-a100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from extproc.planner.plan import Planner, PlanSettings
from extproc.planner.profiles import load_profile
from extproc.planner.service_levels import fleet_percentiles
from extproc.planner.sim_workload import MeasuredBytesPerToken, from_requests
from extproc.workload.spec import WorkloadSpec, build_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--trace", default="azure-both")
    ap.add_argument("--profile", default="llama3-70b-a100")
    args = ap.parse_args()
    t0 = time.perf_counter()
    requests = build_workload(WorkloadSpec(trace=args.trace, rate=args.rate, count=args.requests, seed=0))
    wl = from_requests(args.trace, requests, MeasuredBytesPerToken(), np.random.default_rng(0))
    print(
        f"workload: {len(wl):,} requests of {args.trace} at {args.rate:g} req/s built in "
        f"{time.perf_counter() - t0:.2f} s"
    )
    planner = Planner(PlanSettings(load_profile(args.profile), args.rate), wl)
    for label, run in (
        ("homogeneous, 460 instances", lambda: planner.simulate_homogeneous(460)),
        ("dual B=8192, 360+40 instances (router in the loop)", lambda: planner.simulate_dual(8192, 360, 40)[0]),
        ("dual B=2048, 110+260 instances (router in the loop)", lambda: planner.simulate_dual(2048, 110, 260)[0]),
    ):
        t = time.perf_counter()
        res = run()
        dt = time.perf_counter() - t
        f = fleet_percentiles(res)
        print(
            f"{label:<52} {dt:6.2f} s  ({len(wl) / dt:,.0f} req/s simulated; P99 TTFT {f['ttft_p99_s']:.2f} s, "
            f"{'OK' if dt <= 20 else 'OVER'} vs the 20 s target)"
        )


if __name__ == "__main__":
    main()
