"""``budget-router plan``: does a dual-pool split pay off for this traffic, and at which B_short?

Example (the paper's setting)::

    budget-router plan --trace azure-both --rate 1000 --profile llama3-70b-a100 \\
        --sweep 2048,4096,8192,16384 --out out/plan-azure-both
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

import numpy as np

from extproc.config import load_config
from extproc.planner.fleet import BALANCERS, LEAST_OUTSTANDING
from extproc.planner.plan import DEFAULT_MAX_INSTANCES, PlanSettings, plan
from extproc.planner.plan_report import format_table, write_json
from extproc.planner.profiles import builtin_profiles, load_profile
from extproc.planner.service_levels import Slo
from extproc.planner.sim_progress import ProgressBar
from extproc.planner.sim_workload import MeasuredBytesPerToken, from_requests
from extproc.workload.cli_args import add_workload_arguments, workload_spec_from_args
from extproc.workload.spec import build_workload

DEFAULT_REQUESTS = 100_000
DEFAULT_REPLICATIONS = 3
MAX_REQUESTS = 2_000_000  # per simulation: bounds the event count (and the memory of one run)


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
        default=None,
        help="load balancing of the homogeneous baseline (default: the same as --pool-balancer, so the "
        "comparison is like for like; round_robin with least_outstanding pools is the paper's "
        "mismatched baseline and is labelled so)",
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
    g.add_argument(
        "--scrape-delay",
        type=_delay,
        default=None,
        metavar="S",
        help="spill on live pool load (live_load): engine /metrics sampled every 100 ms and seen S "
        "seconds late (default: the router's own, exact in-flight count)",
    )
    g.add_argument(
        "--replications",
        type=int,
        default=DEFAULT_REPLICATIONS,
        metavar="R",
        help=f"size every fleet on R draws of the workload (seeds seed..seed+R-1) and report the spread; "
        f"a threshold is picked over another only when cheaper by more than it (default "
        f"{DEFAULT_REPLICATIONS}; 1 is R times quicker but measures no spread)",
    )
    g.add_argument(
        "--max-instances",
        type=int,
        default=DEFAULT_MAX_INSTANCES,
        metavar="N",
        help=f"largest pool the simulator may build (default {DEFAULT_MAX_INSTANCES:,}); "
        "a rate that needs more is refused before simulating",
    )
    g.add_argument("--out", type=Path, default=Path("out/plan"), help="folder for plan.json and the PNG plots")
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        print(f"budget-router plan: error: {exc}", file=sys.stderr)
        return 2


def _check_out(out: Path) -> None:
    """Make the output folder now: a bad --out must fail before the simulations, not after them."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"--out {out}: cannot create the folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ValueError(f"--out {out}: the folder is not writable")
    taken = [name for name in ("plan.json", "cdf.png", "saving.png", "gpus.png") if (out / name).is_dir()]
    if taken:
        raise ValueError(f"--out {out}: {', '.join(taken)} exist(s) as a folder")


def _trace_rate(wl_arrival: np.ndarray) -> float:
    span = float(wl_arrival[-1] - wl_arrival[0])
    if not span > 0:
        raise ValueError("the trace's timestamps all coincide, so it has no rate of its own: give --rate")
    return (len(wl_arrival) - 1) / span


def _run(args: argparse.Namespace) -> int:
    if not args.workload_trace:
        raise ValueError("--trace is required (azure-conv, azure-code, azure-both, synthetic-heavy-tail, or a file)")
    if args.count is not None and not 100 <= args.count <= MAX_REQUESTS:
        raise ValueError(f"--requests must be between 100 (P99s of fewer requests mean little) and {MAX_REQUESTS:,}")
    if not 0.0 <= args.max_reject <= 1.0:
        raise ValueError("--max-reject must be a share in [0, 1]")
    if not 0.0 <= args.warmup < 0.9:
        raise ValueError("--warmup must be in [0, 0.9)")
    if args.homogeneous_seqs is not None and args.homogeneous_seqs < 1:
        raise ValueError("--homogeneous-seqs must be at least 1")
    if not 1 <= args.replications <= 20:
        raise ValueError("--replications must be between 1 and 20")
    if args.max_instances < 1:
        raise ValueError("--max-instances must be at least 1")
    if args.rate is not None and not (math.isfinite(args.rate) and args.rate > 0):
        raise ValueError("--rate must be a positive number of requests per second")
    if args.rate is not None and args.count is None and args.duration is None:
        args.count = DEFAULT_REQUESTS
    _check_out(args.out)
    config = load_config(args.config)
    profile = load_profile(args.profile)
    thresholds = args.sweep or [config.routing.b_short if args.b_short is None else args.b_short]
    spec = workload_spec_from_args(args)
    workloads = []
    for r in range(args.replications):
        seed = spec.seed + r
        requests = build_workload(dataclasses.replace(spec, seed=seed))
        if len(requests) < 100:
            raise ValueError(f"the workload has only {len(requests)} requests; at least 100 are needed")
        if len(requests) > MAX_REQUESTS:
            raise ValueError(
                f"the workload has {len(requests):,} requests, more than {MAX_REQUESTS:,}: "
                "give --requests or --duration"
            )
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        workloads.append((seed, from_requests(args.workload_trace, requests, MeasuredBytesPerToken(), rng)))
    rate = args.rate if args.rate is not None else _trace_rate(workloads[0][1].arrival)
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
        max_instances=args.max_instances,
        config=config,
    )
    bar = None if args.quiet else ProgressBar(fleets=args.replications * (1 + len(thresholds)))
    try:
        report = plan(settings, workloads, thresholds, args.workload_trace, bar)
    finally:
        if bar is not None:
            bar.close()
    print(format_table(report))
    write_json(report, args.out / "plan.json")
    from extproc.planner.plots import write_plots  # matplotlib only when there is something to draw

    paths = write_plots(workloads[0][1].total, report, args.out)
    print(f"\nwrote {args.out / 'plan.json'}, " + ", ".join(str(p) for p in paths))
    return 0
