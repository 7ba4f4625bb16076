"""``budget-router plan``: does a dual-pool split pay off for this traffic, and at which B_short?

Example (the paper's setting)::

    budget-router plan --trace azure-both --rate 1000 --profile llama3-70b-a100 \\
        --sweep 2048,4096,8192,16384 --out out/plan-azure-both
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from extproc.config import load_config
from extproc.planner.fleet import BALANCERS, LEAST_OUTSTANDING, ROUND_ROBIN
from extproc.planner.plan import Planner, PlanSettings
from extproc.planner.plan_report import format_table, write_json
from extproc.planner.profiles import builtin_profiles, load_profile
from extproc.planner.service_levels import Slo
from extproc.planner.sim_progress import ProgressBar
from extproc.planner.sim_workload import MeasuredBytesPerToken, from_requests
from extproc.workload.cli_args import add_workload_arguments, workload_spec_from_args
from extproc.workload.spec import build_workload

DEFAULT_REQUESTS = 100_000


def _thresholds(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"thresholds must be positive token counts, got {text!r}")
    return sorted(set(values))


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def _delay(text: str) -> float:
    value = float(text)
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("Example", 1)[1] if __doc__ else None
    add_workload_arguments(parser)
    parser.add_argument(
        "--requests",
        dest="count",
        type=int,
        default=None,
        help=f"requests to simulate (alias of --count; default {DEFAULT_REQUESTS:,} with --rate)",
    )
    parser.add_argument(
        "--seed",
        dest="workload_seed",
        type=int,
        default=0,
        help="seed for the workload and the simulation (alias of --workload-seed)",
    )
    g = parser.add_argument_group("plan")
    g.add_argument(
        "--profile",
        default="llama3-70b-a100",
        help=f"instance profile: {', '.join(builtin_profiles())}, or a YAML file",
    )
    g.add_argument(
        "--config",
        "-c",
        default=None,
        help="the router's YAML config (as for serve); B_short defaults to its routing.b_short",
    )
    g.add_argument("--b-short", type=int, default=None, help="the threshold to evaluate (default: the config's)")
    g.add_argument(
        "--sweep",
        type=_thresholds,
        default=None,
        metavar="B1,B2,...",
        help="evaluate these thresholds and pick the cheapest meeting the SLOs",
    )
    g.add_argument("--slo-ttft-p99", type=_seconds, default=2.0, help="P99 time to first token, s (default 2.0)")
    g.add_argument("--slo-tpot-p99", type=_seconds, default=0.08, help="P99 time per output token, s (default 0.08)")
    g.add_argument("--util-cap", type=_fraction, default=0.9, help="offered load / capacity cap (default 0.9)")
    g.add_argument(
        "--max-reject",
        type=float,
        default=0.001,
        help="largest share of requests a picked threshold may lose to rejections (default 0.001)",
    )
    g.add_argument("--warmup", type=float, default=0.1, help="share of the first requests left out of the metrics")
    g.add_argument(
        "--homogeneous-balancer",
        choices=BALANCERS,
        default=ROUND_ROBIN,
        help="load balancing of the homogeneous baseline (default round_robin, as in the paper)",
    )
    g.add_argument(
        "--pool-balancer",
        choices=BALANCERS,
        default=LEAST_OUTSTANDING,
        help="load balancing inside each dual pool (default least_outstanding)",
    )
    g.add_argument(
        "--homogeneous-seqs",
        type=int,
        default=None,
        metavar="N",
        help="max_num_seqs of the homogeneous baseline (default: the long pool's; a larger value "
        "overcommits the KV cache as vLLM allows, trading preemptions for concurrency)",
    )
    g.add_argument("--no-spillover", action="store_true", help="disable the router's short->long spillover")
    g.add_argument("--scrape-delay", type=_delay, default=None, metavar="S",
                   help="spill on live pool load (live_load): engine /metrics sampled every 100 ms and seen S "
                   "seconds late (default: the router's own, exact in-flight count)")
    g.add_argument("--out", type=Path, default=Path("out/plan"), help="folder for plan.json and the PNG plots")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"budget-router plan: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if not args.workload_trace:
        raise ValueError("--trace is required (azure-conv, azure-code, azure-both, synthetic-heavy-tail, or a file)")
    if args.count is not None and args.count < 100:
        raise ValueError("--requests must be at least 100 (P99s of fewer requests mean little)")
    if not 0.0 <= args.max_reject <= 1.0:
        raise ValueError("--max-reject must be a share in [0, 1]")
    if not 0.0 <= args.warmup < 0.9:
        raise ValueError("--warmup must be in [0, 0.9)")
    if args.homogeneous_seqs is not None and args.homogeneous_seqs < 1:
        raise ValueError("--homogeneous-seqs must be at least 1")
    if args.rate is not None and args.count is None and args.duration is None:
        args.count = DEFAULT_REQUESTS
    config = load_config(args.config)
    profile = load_profile(args.profile)
    spec = workload_spec_from_args(args)
    requests = build_workload(spec)
    if len(requests) < 100:
        raise ValueError(f"the workload has only {len(requests)} requests; at least 100 are needed")
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, 1]))
    wl = from_requests(args.workload_trace, requests, MeasuredBytesPerToken(), rng)
    rate = args.rate if args.rate is not None else (len(wl) - 1) / max(float(wl.arrival[-1] - wl.arrival[0]), 1e-9)
    settings = PlanSettings(
        profile=profile,
        rate=rate,
        slo=Slo(args.slo_ttft_p99, args.slo_tpot_p99, args.util_cap),
        warmup=args.warmup,
        homogeneous_balancer=args.homogeneous_balancer,
        pool_balancer=args.pool_balancer,
        homogeneous_seqs=args.homogeneous_seqs,
        spillover=False if args.no_spillover else None,
        scrape_delay_s=args.scrape_delay,
        seed=spec.seed,
        max_reject=args.max_reject,
        config=config,
    )
    thresholds = args.sweep or [args.b_short or config.routing.b_short]
    bar = None if args.quiet else ProgressBar()
    try:
        report = Planner(settings, wl, bar).run(thresholds, args.workload_trace)
    finally:
        if bar is not None:
            bar.close()
    print(format_table(report))
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(report, args.out / "plan.json")
    from extproc.planner.plots import write_plots  # matplotlib only when there is something to draw

    paths = write_plots(wl.total, report, args.out)
    print(f"\nwrote {args.out / 'plan.json'}, " + ", ".join(str(p) for p in paths))
    return 0
