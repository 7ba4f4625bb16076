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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extproc.config import load_config
from extproc.options import (
    Command,
    ConfigError,
    at_least,
    command_env_prefix,
    default_of,
    group,
    opt,
    within,
)
from extproc.planner.fleet import BALANCERS
from extproc.planner.plan import PAPER, TUNED, PlanSettings, plan
from extproc.planner.plan_report import PLOTS, format_table, write_json
from extproc.planner.profiles import builtin_profiles, load_profile
from extproc.planner.service_levels import Slo
from extproc.planner.sim_progress import ProgressBar
from extproc.planner.sim_workload import MeasuredBytesPerToken, from_requests
from extproc.workload.cli_args import TRACE_HELP, WorkloadOptions
from extproc.workload.spec import WorkloadSpec, build_workload

DEFAULT_REQUESTS = 100_000
DEFAULT_REPLICATIONS = 3
MAX_REQUESTS = 2_000_000  # per simulation: bounds the event count (and the memory of one run)


def _thresholds(text: str) -> tuple[int, ...]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated token counts, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise ValueError(f"thresholds must be positive token counts, got {text!r}")
    return tuple(sorted(set(values)))


def _seconds(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"must be > 0 seconds, got {text}")
    return value


def _chunks(text: str) -> tuple[int, ...]:
    try:
        values = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise ValueError(f"expected comma-separated token counts, got {text!r}") from None
    if not values or any(v < 16 for v in values):
        raise ValueError(f"chunk sizes must be token counts of at least 16, got {text!r}")
    return values


def _ms_text(value: float | None) -> str:
    return "off" if value is None else f"{1000 * value:g} ms"


_SLO = Slo()
_TRACE_CLOCK = 1.0  # PlanSettings.rate until the trace's own rate is measured
_DEFAULT_CHUNKS: tuple[int, ...] = default_of(PlanSettings, "chunks")


@dataclass(frozen=True)
class PlanOptions:
    """Every option of ``budget-router plan``; the planner's own defaults come from ``PlanSettings``
    and ``Slo``, the one place they live."""

    trace: str | None = opt(None, f"The traffic to plan for (required): {TRACE_HELP}.", "TRACE", example="azure-conv")
    workload: WorkloadOptions = group(WorkloadOptions, title="workload")
    profile: str = opt(
        "llama3-70b-a100", f"Instance profile: {', '.join(builtin_profiles())}, or a YAML file (step costs "
        "fitted to Vidur's A100 profiles by default).", "NAME|FILE", example="llama3-70b-a100-fleetsim",
    )  # fmt: skip
    config: Path | None = opt(
        None, "The router's YAML config (as for serve); B_short defaults to its routing.b_short.", "FILE",
        aliases=("-c",),
    )  # fmt: skip
    b_short: int | None = opt(None, "The threshold to evaluate.", check=at_least(1), shown="the config's")
    sweep: tuple[int, ...] | None = opt(
        None, "Evaluate these thresholds and pick the cheapest meeting the SLOs.", "B1,B2,...", parse=_thresholds,
        example="2048,8192",
    )  # fmt: skip
    baseline: str = opt(
        "tuned", "tuned: every pool, the homogeneous fleet's included, runs the max_num_seqs and "
        "max_num_batched_tokens a search found cheapest under the SLOs; paper: the paper's worst-case KV "
        "reservation (16 sequences at 64K, 128 at 8K) and fixed chunks; both: side by side.",
        choices=("tuned", "paper", "both"),
    )  # fmt: skip
    slo_ttft_p99: float = opt(_SLO.ttft_p99_s, "P99 time to first token, s.", "S", parse=_seconds)
    slo_tpot_p99: float | None = opt(
        _SLO.tpot_p99_s, "P99 TPOT (a request's mean time per output token), s.", "S|off", parse=_seconds,
        shown=_ms_text(_SLO.tpot_p99_s),
    )  # fmt: skip
    slo_itl_p99: float | None = opt(
        _SLO.itl_p99_s, "P99 inter-token latency (every gap between two tokens, as vLLM's histogram), s; off: "
        "reported, not bounded.", "S|off", parse=_seconds, shown=_ms_text(_SLO.itl_p99_s),
    )  # fmt: skip
    util_cap: float = opt(
        _SLO.util_cap, "Offered load / capacity cap.", check=(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")
    )
    max_reject: float = opt(
        default_of(PlanSettings, "max_reject"), "Largest share of requests a picked threshold may lose to "
        "rejections.", check=within(0.0, 1.0),
    )  # fmt: skip
    warmup: float = opt(
        default_of(PlanSettings, "warmup"), "Share of the first requests left out of the metrics.",
        check=(lambda v: 0.0 <= v < 0.9, "must be in [0, 0.9)"),
    )  # fmt: skip
    balancer: str = opt(
        default_of(PlanSettings, "balancer"), "Load balancing inside every pool and the homogeneous fleet: "
        "least_request (Envoy's LEAST_REQUEST, power of two choices), jsq (exact join-shortest-queue, which no "
        "Envoy does) or round_robin.", choices=BALANCERS,
    )  # fmt: skip
    homogeneous_balancer: str | None = opt(
        None, "A different balancer for the homogeneous baseline only (the comparison is then labelled "
        "MISMATCHED).", choices=BALANCERS, shown="--balancer", example="jsq",
    )  # fmt: skip
    chunks: tuple[int, ...] = opt(
        _DEFAULT_CHUNKS, "max_num_batched_tokens values the search tries.", "C1,C2,...", parse=_chunks,
        example="512,4096",
    )  # fmt: skip
    max_seqs: int = opt(
        default_of(PlanSettings, "max_seqs"), "Largest max_num_seqs the search tries (vLLM's largest default; the "
        "search also stops at KV cache / the traffic's mean tokens).", check=at_least(1),
    )  # fmt: skip
    spillover: bool | None = opt(None, "The router's short->long spillover.", shown="the config's spillover.enabled")
    scrape_delay: float | None = opt(
        None, "Spill on live pool load (live_load): engine /metrics sampled every 100 ms and seen S seconds late.",
        "S", check=at_least(0), shown="the router's own, exact in-flight count",
    )  # fmt: skip
    replications: int = opt(
        DEFAULT_REPLICATIONS, "Size every fleet on R draws of the workload (seeds seed..seed+R-1) and report the "
        "spread; a threshold is picked over another only when cheaper by more than it (1 is R times quicker but "
        "measures no spread).", "R", check=within(1, 20),
    )  # fmt: skip
    screen_requests: int = opt(
        default_of(PlanSettings, "screen_requests"), "Requests per screening run of a candidate configuration "
        "(a screening P99 needs its tail).", check=at_least(1000),
    )  # fmt: skip
    max_instances: int = opt(
        default_of(PlanSettings, "max_instances"), "Largest pool the simulator may build; a rate that needs more "
        "is refused before simulating.", check=at_least(1),
    )  # fmt: skip
    equal_gpus: bool = opt(default_of(PlanSettings, "equal_gpus"), "Run the equal-GPU comparison.")
    sensitivity: bool = opt(default_of(PlanSettings, "sensitivity"), "Print the sensitivity table.")
    erlang: bool = opt(default_of(PlanSettings, "erlang"), "Check the simulator against Erlang C.")
    jobs: int | None = opt(
        None, "Worker processes; the plan is the same for any N.", check=within(1, 64),
        shown="the CPUs this process may use", example="7",
    )  # fmt: skip
    out: Path = opt(Path("out/plan"), "Folder for plan.json and the PNG plots.", "DIR")
    quiet: bool = opt(False, "No progress bar.")

    def __post_init__(self) -> None:
        count = self.workload.count
        if count is not None and not 100 <= count <= MAX_REQUESTS:
            raise ConfigError(
                f"--requests must be between 100 (P99s of fewer requests mean little) and {MAX_REQUESTS:,}"
            )
        if self.sweep is not None and self.b_short is not None:
            raise ConfigError("--b-short and --sweep both name the thresholds: give one")


OPTIONS = Command(PlanOptions, command_env_prefix("plan"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = __doc__.split("Example", 1)[1] if __doc__ else None
    OPTIONS.add_arguments(parser)


@dataclass(frozen=True)
class PlanRun:
    """What a plan runs with, before any simulation: the settings, the workload, the thresholds, the
    replications and the output. Without ``--rate`` the settings' rate is a stand-in until the drawn
    workload tells the trace's own (``spec.rate`` is None then)."""

    settings: PlanSettings
    spec: WorkloadSpec
    thresholds: tuple[int, ...]
    replications: int
    out: Path
    progress: bool


def prepare(o: PlanOptions) -> PlanRun:
    """Every option turned into what it configures; reads the router config and the profile, draws nothing."""
    if not o.trace:
        raise ConfigError(f"--trace is required ({TRACE_HELP})")
    spec = o.workload.spec(o.trace)
    if spec.rate is not None and spec.count is None and spec.duration_s is None:
        spec = dataclasses.replace(spec, count=DEFAULT_REQUESTS)
    config = load_config(o.config)
    settings = PlanSettings(
        profile=load_profile(o.profile),
        rate=spec.rate or _TRACE_CLOCK,
        slo=Slo(o.slo_ttft_p99, o.slo_tpot_p99, o.slo_itl_p99, o.util_cap),
        warmup=o.warmup,
        balancer=o.balancer,
        homogeneous_balancer=o.homogeneous_balancer,
        baselines={"tuned": (TUNED,), "paper": (PAPER,), "both": (TUNED, PAPER)}[o.baseline],
        chunks=o.chunks,
        max_seqs=o.max_seqs,
        spillover=o.spillover,
        scrape_delay_s=o.scrape_delay,
        seed=spec.seed,
        max_reject=o.max_reject,
        max_instances=o.max_instances,
        screen_requests=o.screen_requests,
        equal_gpus=o.equal_gpus,
        sensitivity=o.sensitivity,
        erlang=o.erlang,
        jobs=o.jobs or _cpus(),
        config=config,
    )
    thresholds = o.sweep or (config.routing.b_short if o.b_short is None else o.b_short,)
    return PlanRun(settings, spec, thresholds, o.replications, o.out, not o.quiet)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(prepare(OPTIONS.from_args(args)))
    except ConfigError:
        raise  # named by its option; the CLI prints it
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


def _run(r: PlanRun) -> int:
    _check_out(r.out)
    spec = r.spec
    workloads = []
    for i in range(r.replications):
        seed = spec.seed + i
        requests = build_workload(dataclasses.replace(spec, seed=seed))
        if len(requests) < 100:
            raise ValueError(f"the workload has only {len(requests)} requests; at least 100 are needed")
        if len(requests) > MAX_REQUESTS:
            raise ValueError(
                f"the workload has {len(requests):,} requests, more than {MAX_REQUESTS:,}: "
                "give --requests or --duration"
            )
        rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
        workloads.append((seed, from_requests(spec.trace, requests, MeasuredBytesPerToken(), rng)))
    settings = r.settings
    if spec.rate is None:
        settings = dataclasses.replace(settings, rate=_trace_rate(workloads[0][1].arrival))
    bar = ProgressBar() if r.progress else None
    try:
        report = plan(settings, workloads, list(r.thresholds), spec.trace, bar)
    finally:
        if bar is not None:
            bar.close()
    print(format_table(report))
    write_json(report, r.out / "plan.json")
    from extproc.planner.plots import write_plots  # matplotlib only when there is something to draw

    paths = write_plots(workloads[0][1].total, report, r.out)
    print(f"\nwrote {r.out / 'plan.json'}, " + ", ".join(str(p) for p in paths))
    return 0
