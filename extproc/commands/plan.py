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
from extproc.planner.fleet import BALANCERS
from extproc.planner.plan import PAPER, TUNED, PlanSettings, plan
from extproc.planner.plan_report import PLOTS, format_table, write_json
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


def _default(name: str) -> object:
    """A ``PlanSettings`` (or ``Slo``) field's default: the one place the planner's defaults live."""
    for cls in (PlanSettings, Slo):
        for f in dataclasses.fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
    raise KeyError(name)


def _optional_seconds(text: str) -> float | None:
    if text.strip().lower() in ("off", "none"):
        return None
    return _seconds(text)


def _chunks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated token counts, got {text!r}") from None
    if not values or any(v < 16 for v in values):
        raise argparse.ArgumentTypeError(f"chunk sizes must be token counts of at least 16, got {text!r}")
    return values


def _ms_text(value: object) -> str:
    return "off" if value is None else f"{1000 * float(value):g} ms"  # type: ignore[arg-type]


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
        help=f"instance profile: {', '.join(builtin_profiles())}, or a YAML file (default llama3-70b-a100, "
        "step costs fitted to Vidur's A100 profiles)",
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
    g.add_argument(
        "--baseline",
        choices=("tuned", "paper", "both"),
        default="tuned",
        help="tuned (default): every pool, the homogeneous fleet's included, runs the max_num_seqs and "
        "max_num_batched_tokens a search found cheapest under the SLOs; paper: the paper's worst-case KV "
        "reservation (16 sequences at 64K, 128 at 8K) and fixed chunks; both: side by side",
    )
    g.add_argument(
        "--slo-ttft-p99",
        type=_seconds,
        default=_default("ttft_p99_s"),
        metavar="S",
        help=f"P99 time to first token, s (default {_default('ttft_p99_s')})",
    )
    g.add_argument(
        "--slo-tpot-p99",
        type=_optional_seconds,
        default=_default("tpot_p99_s"),
        metavar="S|off",
        help=f"P99 TPOT (a request's mean time per output token), s (default {_ms_text(_default('tpot_p99_s'))})",
    )
    g.add_argument(
        "--slo-itl-p99",
        type=_optional_seconds,
        default=_default("itl_p99_s"),
        metavar="S|off",
        help="P99 inter-token latency (every gap between two tokens, as vLLM's histogram), s (default "
        f"{_ms_text(_default('itl_p99_s'))}: reported, not bounded)",
    )
    g.add_argument(
        "--util-cap",
        type=_fraction,
        default=_default("util_cap"),
        help=f"offered load / capacity cap (default {_default('util_cap')})",
    )
    g.add_argument(
        "--max-reject",
        type=float,
        default=_default("max_reject"),
        help=f"largest share of requests a picked threshold may lose to rejections (default {_default('max_reject')})",
    )
    g.add_argument(
        "--warmup",
        type=float,
        default=_default("warmup"),
        help=f"share of the first requests left out of the metrics (default {_default('warmup')})",
    )
    g.add_argument(
        "--balancer",
        choices=BALANCERS,
        default=_default("balancer"),
        help="load balancing inside every pool and the homogeneous fleet: least_request (default: Envoy's "
        "LEAST_REQUEST, power of two choices), jsq (exact join-shortest-queue, which no Envoy does) or round_robin",
    )
    g.add_argument(
        "--homogeneous-balancer",
        choices=BALANCERS,
        default=None,
        help="a different balancer for the homogeneous baseline only (the comparison is then labelled MISMATCHED)",
    )
    g.add_argument(
        "--chunks",
        type=_chunks,
        default=_default("chunks"),
        metavar="C1,C2,...",
        help="max_num_batched_tokens values the search tries (default "
        + ",".join(str(c) for c in _default("chunks"))  # type: ignore[attr-defined]
        + ")",
    )
    g.add_argument(
        "--max-seqs",
        type=int,
        default=_default("max_seqs"),
        metavar="N",
        help=f"largest max_num_seqs the search tries (default {_default('max_seqs')}, vLLM's largest default; "
        "the search also stops at KV cache / the traffic's mean tokens)",
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
        "--screen-requests",
        type=int,
        default=_default("screen_requests"),
        metavar="N",
        help=f"requests per screening run of a candidate configuration (default {_default('screen_requests'):,})",
    )
    g.add_argument(
        "--max-instances",
        type=int,
        default=_default("max_instances"),
        metavar="N",
        help=f"largest pool the simulator may build (default {_default('max_instances'):,}); "
        "a rate that needs more is refused before simulating",
    )
    g.add_argument("--no-equal-gpus", action="store_true", help="skip the equal-GPU comparison")
    g.add_argument("--no-sensitivity", action="store_true", help="skip the sensitivity table")
    g.add_argument("--no-erlang", action="store_true", help="skip the simulator-vs-Erlang C check")
    g.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="worker processes (default: the CPUs this process may use); the plan is the same for any N",
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
    taken = [name for name in ("plan.json", *PLOTS) if (out / name).is_dir()]
    if taken:
        raise ValueError(f"--out {out}: {', '.join(taken)} exist(s) as a folder")


def _trace_rate(wl_arrival: np.ndarray) -> float:
    span = float(wl_arrival[-1] - wl_arrival[0])
    if not span > 0:
        raise ValueError("the trace's timestamps all coincide, so it has no rate of its own: give --rate")
    return (len(wl_arrival) - 1) / span


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _run(args: argparse.Namespace) -> int:
    if not args.workload_trace:
        raise ValueError("--trace is required (azure-conv, azure-code, azure-both, synthetic-heavy-tail, or a file)")
    if args.count is not None and not 100 <= args.count <= MAX_REQUESTS:
        raise ValueError(f"--requests must be between 100 (P99s of fewer requests mean little) and {MAX_REQUESTS:,}")
    if not 0.0 <= args.max_reject <= 1.0:
        raise ValueError("--max-reject must be a share in [0, 1]")
    if not 0.0 <= args.warmup < 0.9:
        raise ValueError("--warmup must be in [0, 0.9)")
    if not 1 <= args.replications <= 20:
        raise ValueError("--replications must be between 1 and 20")
    if args.max_instances < 1:
        raise ValueError("--max-instances must be at least 1")
    if args.max_seqs < 1:
        raise ValueError("--max-seqs must be at least 1")
    if args.screen_requests < 1000:
        raise ValueError("--screen-requests must be at least 1000 (a screening P99 needs its tail)")
    if args.jobs is not None and not 1 <= args.jobs <= 64:
        raise ValueError("--jobs must be between 1 and 64")
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
    baselines = {"tuned": (TUNED,), "paper": (PAPER,), "both": (TUNED, PAPER)}[args.baseline]
    settings = PlanSettings(
        profile=profile,
        rate=rate,
        slo=Slo(args.slo_ttft_p99, args.slo_tpot_p99, args.slo_itl_p99, args.util_cap),
        warmup=args.warmup,
        balancer=args.balancer,
        homogeneous_balancer=args.homogeneous_balancer,
        baselines=baselines,
        chunks=args.chunks,
        max_seqs=args.max_seqs,
        spillover=False if args.no_spillover else None,
        scrape_delay_s=args.scrape_delay,
        seed=spec.seed,
        max_reject=args.max_reject,
        max_instances=args.max_instances,
        screen_requests=args.screen_requests,
        equal_gpus=not args.no_equal_gpus,
        sensitivity=not args.no_sensitivity,
        erlang=not args.no_erlang,
        jobs=args.jobs or _cpus(),
        config=config,
    )
    bar = None if args.quiet else ProgressBar()
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
