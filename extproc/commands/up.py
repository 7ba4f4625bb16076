"""``budget-router up``: the embedded stack, interactive or driving a replay to a report.

Without ``--replay`` it starts the stack, prints the endpoint and a curl example and runs until
Ctrl-C or SIGTERM. With ``--replay`` it sends the workload through Envoy, draws a progress bar, stops
the stack (so Envoy and the routers flush their logs and state) and prints the report. Either way
a child that dies meanwhile is restarted (a crashed router is an outage of routing, not of serving),
and every child process is stopped on the way out, interrupted or not.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from extproc.addresses import Endpoint, parse_endpoint
from extproc.config import TelemetryConfig
from extproc.gateway.envoy_config import SERVED_POOL_HEADER
from extproc.options import (
    Command,
    ConfigError,
    above,
    at_least,
    command_env_prefix,
    default_of,
    group,
    non_defaults,
    opt,
    port_number,
    within,
)
from extproc.router_factory import build_router
from extproc.stack.replay import MODEL, PlannedRequest, Replayer, plan
from extproc.stack.replay_progress import Progress
from extproc.stack.replay_report import build_report, render, save_png, true_ratios
from extproc.stack.router_view import CalibrationTimeline, read_decisions
from extproc.stack.stack import Stack, StackOptions, router_config
from extproc.workload.cli_args import TRACE_HELP, WorkloadOptions
from extproc.workload.spec import WorkloadSpec, build_workload

TRACE_ALIASES = {"synthetic": "synthetic-heavy-tail"}
DEMO_HINT = "budget-router up --replay azure-conv --rate 20 --duration 60"
OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_GRPC_PORT = 4317


def _trace(text: str) -> str:
    return TRACE_ALIASES.get(text, text)


@dataclass(frozen=True)
class UpOptions:
    """Every option of ``budget-router up``; the stack's own defaults come from ``StackOptions`` where
    the demo does not need its own (``latency_scale``: a demo rate below saturation)."""

    replay: str | None = opt(
        None, f"Send this workload through the stack and print the report: {TRACE_HELP} (synthetic = "
        "synthetic-heavy-tail).", "TRACE", parse=_trace, shown="none: serve until Ctrl-C", example="azure-conv",
    )  # fmt: skip
    workload: WorkloadOptions = group(WorkloadOptions, title="workload (with --replay)")
    concurrency: int = opt(512, "Replay client: cap on requests in flight.", check=at_least(1))
    stream_share: float = opt(0.5, "Replay client: share of requests sent with stream=true.", check=within(0, 1))
    timeout: float = opt(600.0, "Replay client: per-request timeout.", "SECONDS", check=above(0))
    png: Path | None = opt(None, "Write a PNG of the learned ratios converging (with --replay).")
    json: Path | None = opt(None, "Write the report, every request and the ratio timeline as JSON (with --replay).")
    latency_scale: float = opt(
        0.25, "Emulator time scale: 1 = its Llama-3-8B-class model, whose short pool saturates near 18 req/s of "
        "azure-conv; 0.25 keeps the demo rate below saturation; 0 = instant.", check=at_least(0),
    )  # fmt: skip
    router_replicas: int = opt(
        default_of(StackOptions, "router_replicas"), "Router processes behind Envoy (0 = none).", check=at_least(0)
    )
    fail_closed: bool = opt(not default_of(StackOptions, "fail_open"), "Envoy answers 503 when the router fails.")
    live_load: bool = opt(
        default_of(StackOptions, "live_load"),
        "Routers spill on the pools' own /metrics (found through Envoy's admin) instead of their own counts.",
    )
    router_flag: tuple[str, ...] = opt(
        tuple(default_of(StackOptions, "router_flags")), "Extra `budget-router serve` flag, e.g. "
        "--router-flag=--routing-b-short=4096 (the routers also read BUDGET_ROUTER_<SECTION>_<KEY> themselves).",
        "FLAG", parse=str, repeat=True, env=False, example="--routing-b-short=4096",
    )  # fmt: skip
    port: int = opt(
        default_of(StackOptions, "listen_port"), "Envoy listener port (0 = a free one).", check=port_number()
    )
    admin_port: int = opt(
        default_of(StackOptions, "admin_port"), "Envoy admin port (0 = a free one).", check=port_number()
    )
    state_file: Path | None = opt(None, "Router calibration state.", shown="in the run dir")
    run_dir: Path | None = opt(None, "Logs, envoy.yaml and state.", "DIR", shown="a new temp dir")
    metrics_port: int = opt(
        TelemetryConfig().metrics_port, "Routers' Prometheus port (replicas take the next ones; a free port where "
        "taken; 0 = off).", check=port_number(),
    )  # fmt: skip
    otlp: str | None = opt(
        None, "OTLP/gRPC collector: tracing on in Envoy and the routers.", "HOST:PORT",
        shown=f"${OTLP_ENV}, else off", example="127.0.0.1:4317",
    )  # fmt: skip
    served_pool_header: bool = opt(False, f"Envoy adds {SERVED_POOL_HEADER}: <pool> to every response (for debugging).")

    def __post_init__(self) -> None:
        if self.replay is None:
            idle = non_defaults(self, [(name,) for name in _REPLAY_ONLY])
            if idle:
                raise ConfigError(f"{', '.join(idle)}: only with a replay (give --replay TRACE, e.g. {DEMO_HINT})")


_REPLAY_ONLY = ("workload", "concurrency", "stream_share", "timeout", "png", "json")
OPTIONS = Command(UpOptions, command_env_prefix("up"))
add_arguments = OPTIONS.add_arguments


@dataclass(frozen=True)
class ReplayClient:
    concurrency: int
    stream_share: float
    timeout_s: float


@dataclass(frozen=True)
class UpRun:
    """What ``up`` runs: the stack and, for a replay, the workload, the client and the report files."""

    stack: StackOptions
    spec: WorkloadSpec | None
    client: ReplayClient
    png: Path | None
    json: Path | None


def prepare(o: UpOptions) -> UpRun:
    spec = o.workload.spec(o.replay) if o.replay else None
    if spec is not None and spec.count is None and spec.duration_s is None and spec.rate is not None:
        raise ConfigError("--rate needs --duration or --requests (a Poisson replay is otherwise endless)")
    return UpRun(stack_options(o), spec, ReplayClient(o.concurrency, o.stream_share, o.timeout), o.png, o.json)


def otlp_collector(flag: str | None, env: dict[str, str] | os._Environ[str]) -> Endpoint | None:
    """``--otlp HOST:PORT``, else the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (a URL or HOST:PORT)."""
    text = flag if flag is not None else env.get(OTLP_ENV, "")
    if not text.strip():
        return None
    source = "--otlp" if flag is not None else OTLP_ENV
    if "://" in text:
        url = urlsplit(text)
        try:
            port = url.port or OTLP_GRPC_PORT
        except ValueError as exc:
            raise ValueError(f"{source}: bad port in {text!r}") from exc
        if not url.hostname:
            raise ValueError(f"{source}: expected HOST:PORT or a URL, got {text!r}")
        return url.hostname, port
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc


def stack_options(o: UpOptions) -> StackOptions:
    # The replay reads the router's own decision lines for the report.
    flags = ["--telemetry-json-logs", "true", "--telemetry-log-decisions", "true", *o.router_flag]
    return StackOptions(
        run_dir=o.run_dir,
        router_replicas=o.router_replicas,
        live_load=o.live_load,
        fail_open=not o.fail_closed,
        router_flags=tuple(flags),
        latency_scale=o.latency_scale,
        listen_port=o.port,
        admin_port=o.admin_port,
        state_file=o.state_file,
        supervise=True,
        metrics_port=o.metrics_port,
        otlp=otlp_collector(o.otlp, os.environ),
        layout_overrides={"served_pool_header": SERVED_POOL_HEADER} if o.served_pool_header else {},
    )


def _terminate_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C, so the same cleanup path stops every child.

    SIGINT gets Python's own Ctrl-C handler back even when it was inherited as ignored: a shell
    starts background jobs with SIGINT ignored, and Python (and asyncio.run) then leave it ignored,
    so `up` started from a script, or by CI, could not be stopped by the signal it documents.
    """

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, handler)


def run(args: argparse.Namespace) -> int:
    r = prepare(OPTIONS.from_args(args))
    _terminate_on_sigterm()
    if r.spec is not None:
        return asyncio.run(replay_main(r, r.spec))
    return interactive(Stack(r.stack))


def interactive(stack: Stack) -> int:
    """Serve until Ctrl-C or SIGTERM; the stack's supervisor restarts whatever dies meanwhile."""
    print(f"starting Envoy, router and two pools (logs in {stack.run_dir}) ...", file=sys.stderr, flush=True)
    try:
        stack.start()
        print(banner(stack), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping ...", file=sys.stderr)
    finally:
        stack.stop()
    return 0


def banner(stack: Stack) -> str:
    body = orjson.dumps({"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "Hello!"}]})
    return "\n".join(
        [
            f"Envoy (OpenAI API):   {stack.url}/v1/chat/completions",
            f"Envoy admin:          {stack.admin_url}",
            f"short pool (direct):  {stack.pool_url('short')}  max-model-len {stack.options.short.max_model_len}",
            f"long pool (direct):   {stack.pool_url('long')}  max-model-len {stack.options.long.max_model_len}",
            *observability_lines(stack),
            f"router calibration:   {stack.state_file}",
            f"logs:                 {stack.run_dir}",
            "",
            f"curl -s {stack.url}/v1/chat/completions -H 'content-type: application/json' -d '{body.decode()}'",
            "",
            f"Which pool served it: {stack.access_log.path} (field 'pool'). Ctrl-C stops everything;",
            "a router or pool that dies is restarted (Envoy fails open to the long pool meanwhile).",
            f"A replay instead: {DEMO_HINT}",
        ]
    )


def observability_lines(stack: Stack) -> list[str]:
    """Router addresses, their Prometheus endpoints and where traces go, one line each."""
    metrics = stack.metrics_urls()
    lines = [
        f"router-{i} (ext_proc):  {stack.router_address(i)}" + (f"  metrics {metrics[i]}" if metrics else "")
        for i in range(len(stack.router_ports))
    ]
    if stack.options.otlp:
        host, port = stack.options.otlp
        lines.append(f"traces (OTLP/gRPC):   {host}:{port}  from Envoy and the router(s)")
    return lines


async def replay_main(r: UpRun, spec: WorkloadSpec) -> int:
    main = asyncio.current_task()
    if main is not None:  # SIGTERM cancels like Ctrl-C does under asyncio.run: one cleanup path
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    # The workload first (a second or so): a bad trace or an empty workload is an error before any
    # process starts or any run dir is made. Writing its prompts takes longer and overlaps the start.
    requests = await asyncio.to_thread(build_workload, spec)
    if not requests:
        raise ValueError("the workload is empty (check --duration / --requests)")
    stack = Stack(r.stack)
    print(f"starting Envoy, router and two pools (logs in {stack.run_dir}) ...", file=sys.stderr, flush=True)
    try:
        starting = asyncio.create_task(asyncio.to_thread(stack.start))
        planned = await asyncio.to_thread(plan, requests, r.client.stream_share, spec.seed)
        await starting
        metrics = "".join(f"; metrics {url}" for url in stack.metrics_urls())
        traces = f"; traces to {stack.options.otlp[0]}:{stack.options.otlp[1]}" if stack.options.otlp else ""
        print(
            f"stack up: {stack.url}; replaying {len(planned)} requests of {spec.trace}{metrics}{traces}",
            file=sys.stderr,
            flush=True,
        )
        return await _replay_and_report(r, stack, spec, planned)
    finally:
        # Not via to_thread: a second Ctrl-C must not abandon the cleanup half way.
        stack.stop()


async def _replay_and_report(r: UpRun, stack: Stack, spec: WorkloadSpec, planned: list[PlannedRequest]) -> int:
    params = build_router(router_config(stack.options)).calibrator.params
    timeline = CalibrationTimeline(stack.state_file, params)
    replayer = Replayer(stack.url, planned, r.client.concurrency, r.client.timeout_s)
    horizon = planned[-1].arrival_s
    progress = Progress(replayer, horizon)
    replayer.on_done = progress.count
    started = time.monotonic()
    helpers = [
        asyncio.create_task(timeline.run(replayer.elapsed, stack.options.save_interval_s / 2)),
        asyncio.create_task(progress.run()),
    ]
    interrupted = False
    try:
        await replayer.run()
    except asyncio.CancelledError:
        interrupted = True
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    finally:
        for task in helpers:
            task.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        progress.draw(final=True)
    wall = time.monotonic() - started
    offered_s = offered_window(horizon, replayer.elapsed(), interrupted)
    await asyncio.to_thread(stack.stop)  # Envoy flushes its access log; routers save their final state
    timeline.poll(replayer.elapsed())
    stack.access_log.poll()
    outcomes = list(replayer.outcomes)
    pools = {o.request.request_id: stack.access_log.pool_of(o.request.request_id) for o in outcomes}
    decisions = read_decisions(stack.run_dir / f"{p.name}.log" for p in stack.routers)
    run_info = {
        "trace": spec.trace,
        "rate": spec.rate,
        "duration_s": spec.duration_s,
        "planned": len(planned),
        "short_context": stack.options.short.max_model_len,
        "need_long": sum(p.expected_usage + p.output_tokens > stack.options.short.max_model_len for p in planned),
        "sent": replayer.sent,
        "replay_s": offered_s,
        "wall_s": wall,
        "stream_share": r.client.stream_share,
        "seed": spec.seed,
        "mix": str(spec.mix),
        "latency_scale": stack.options.latency_scale,
        "interrupted": interrupted,
        "run_dir": str(stack.run_dir),
    }
    report = build_report(run_info, outcomes, pools, decisions, timeline.points)
    print(render(report), flush=True)
    if r.png:
        save_png(timeline.points, true_ratios(outcomes, decisions), r.png)
        print(f"ratio convergence plot: {r.png}")
    if r.json:
        dump = _dump(report, outcomes, pools, decisions, timeline)
        r.json.write_bytes(orjson.dumps(dump, option=orjson.OPT_INDENT_2))
        print(f"JSON report: {r.json}")
    return 130 if interrupted else 0


def offered_window(horizon_s: float, elapsed_s: float, interrupted: bool) -> float:
    """The span over which requests were offered, for the report's req/s: the planned horizon, or
    the time the replay ran when it was interrupted before its horizon (the offered rate of a replay
    stopped after 5 s of a 60 s plan is what was sent in those 5 s)."""
    span = min(horizon_s, elapsed_s) if interrupted else horizon_s
    return max(span, 1e-9)


def _dump(report: dict[str, Any], outcomes, pools, decisions, timeline: CalibrationTimeline) -> dict[str, Any]:
    rows = []
    for o in outcomes:
        r = o.request
        d = decisions.get(r.request_id, {})
        rows.append(
            {
                "id": r.request_id, "arrival_s": r.arrival_s, "category": r.category,
                "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens, "stream": r.stream,
                "text_bytes": r.text_bytes, "sent_s": o.sent_s, "status": o.status, "error": o.error,
                "latency_s": o.latency_s, "first_byte_s": o.first_byte_s, "pool": pools.get(r.request_id),
                "router": {k: d.get(k) for k in ("pool", "reason", "category", "estimated_prompt_tokens",
                                                 "estimated_total_tokens", "ratio", "prompt_tokens",
                                                 "estimate_error_pct", "spilled")} if d else None,
            }
        )  # fmt: skip
    return {"report": report, "requests": rows, "ratio_timeline": [dataclasses.asdict(p) for p in timeline.points]}
