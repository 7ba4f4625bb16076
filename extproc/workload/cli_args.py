"""The workload flags, defined once for every subcommand that drives traffic (``up --replay``,
``plan``), so a spec written for the demo means the same thing to the planner."""

from __future__ import annotations

import argparse

from extproc.workload.cdf import DEFAULT_INPUT_FRACTION
from extproc.workload.mix import CATEGORIES, DEFAULT_WEIGHTS, CategoryMix
from extproc.workload.spec import BUILTIN_TRACES, WorkloadSpec


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def mix_arg(text: str) -> CategoryMix:
    try:
        return CategoryMix.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_workload_arguments(
    parser: argparse.ArgumentParser, *, trace_flag: str = "--trace", default_trace: str | None = None
) -> None:
    group = parser.add_argument_group("workload")
    group.add_argument(
        trace_flag,
        dest="workload_trace",
        metavar="TRACE",
        default=default_trace,
        help=f"{', '.join(BUILTIN_TRACES)}, or a .csv (Azure), .json (CDF) or .jsonl file",
    )
    group.add_argument(
        "--rate",
        type=_positive_float,
        default=None,
        help="re-time as Poisson arrivals at this many req/s (default: the trace's own clock)",
    )
    group.add_argument(
        "--speedup",
        type=_positive_float,
        default=1.0,
        help="without --rate: divide the trace's own arrival times by this factor",
    )
    group.add_argument("--count", type=positive_int, default=None, help="stop after this many requests")
    group.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="only requests arriving in the first SECONDS",
    )
    group.add_argument("--workload-seed", type=int, default=0, help="seed for sizes, arrivals and categories")
    group.add_argument(
        "--category-mix",
        type=mix_arg,
        default=CategoryMix(),
        help="NAME=WEIGHT,... for requests the trace does not categorise (default: "
        + ",".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items())
        + ")",
    )
    group.add_argument(
        "--code-category",
        choices=[*CATEGORIES, "mix"],
        default="code",
        help="category of the Azure code trace's requests ('mix': draw from --category-mix)",
    )
    group.add_argument(
        "--input-fraction",
        type=float,
        default=DEFAULT_INPUT_FRACTION,
        help="CDF and synthetic traces: share of each total that is prompt",
    )
    group.add_argument(
        "--max-output-tokens",
        type=positive_int,
        default=None,
        help="CDF and synthetic traces: cap on output tokens (the excess goes to the prompt)",
    )


def workload_spec_from_args(args: argparse.Namespace) -> WorkloadSpec:
    if not args.workload_trace:
        raise ValueError("no trace given")
    return WorkloadSpec(
        trace=args.workload_trace,
        rate=args.rate,
        speedup=args.speedup,
        count=args.count,
        duration_s=args.duration,
        seed=args.workload_seed,
        mix=args.category_mix,
        code_category=None if args.code_category == "mix" else args.code_category,
        input_fraction=args.input_fraction,
        max_output_tokens=args.max_output_tokens,
    )
