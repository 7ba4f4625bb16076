"""``budget-router up``: the embedded stack, interactive or driving a replay to a report.

``--engine vllm`` runs real vLLM servers as the pools (installed and built on first use, see
``extproc.engines``) instead of the emulator; everything else is the same.

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
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson

from extproc.addresses import Endpoint, parse_endpoint
from extproc.commands.fleet_args import add_fleet_arguments, engine_fleet, fleet_shape
from extproc.config import TelemetryConfig
from extproc.gateway.envoy_config import SERVED_POOL_HEADER
from extproc.router_factory import build_router
from extproc.stack.replay import PlannedRequest, Replayer, plan
from extproc.stack.replay_progress import Progress
from extproc.stack.replay_report import build_report, render, save_png, true_ratios
from extproc.stack.router_view import CalibrationTimeline, read_decisions
from extproc.stack.stack import Stack, StackOptions, router_config
from extproc.workload.cli_args import add_workload_arguments, mix_arg, positive_int, workload_spec_from_args
from extproc.workload.spec import build_workload

TRACE_ALIASES = {"synthetic": "synthetic-heavy-tail"}
DEMO_HINT = "budget-router up --replay azure-conv --rate 20 --duration 60"
OTLP_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_GRPC_PORT = 4317


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_workload_arguments(parser, trace_flag="--replay")
    w = parser.add_argument_group("workload (short spellings)")
    w.add_argument("--requests", dest="count", type=positive_int, default=argparse.SUPPRESS, help="= --count")
    w.add_argument("--mix", dest="category_mix", type=mix_arg, default=argparse.SUPPRESS, help="= --category-mix")
    w.add_argument("--seed", dest="workload_seed", type=int, default=argparse.SUPPRESS, help="= --workload-seed")
    d = parser.add_argument_group("replay client")
    d.add_argument("--concurrency", type=positive_int, default=512, help="client cap on requests in flight")
    d.add_argument("--stream-share", type=float, default=0.5, help="share of requests sent with stream=true")
    d.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    d.add_argument("--png", type=Path, help="write a PNG of the learned ratios converging")
    d.add_argument("--json", type=Path, help="write the report, every request and the ratio timeline as JSON")
    add_fleet_arguments(parser)
    s = parser.add_argument_group("stack")
    s.add_argument(
        "--latency-scale", type=float, default=0.25,
        help="emulator time scale (--engine emulator): 1 = its Llama-3-8B-class model, whose short pool "
        "saturates near 18 req/s of azure-conv; the default 0.25 keeps the demo rate below saturation; 0 = instant",
    )  # fmt: skip
    s.add_argument("--router-replicas", type=int, default=1, help="router processes behind Envoy (0 = none)")
    s.add_argument("--fail-closed", action="store_true", help="Envoy answers 503 when the router fails")
    s.add_argument(
        "--live-load", action="store_true",
        help="routers spill on the pools' own /metrics (found through Envoy's admin) instead of their own counts",
    )  # fmt: skip
    s.add_argument(
        "--router-flag", action="append", default=[], metavar="FLAG",
        help="extra `budget-router serve` flag, e.g. --router-flag=--routing-b-short=4096 (repeatable)",
    )  # fmt: skip
    s.add_argument("--port", type=int, default=0, help="Envoy listener port (0 = a free one)")
    s.add_argument("--admin-port", type=int, default=0, help="Envoy admin port (0 = a free one)")
    s.add_argument("--state-file", type=Path, help="router calibration state (default: in the run dir)")
    s.add_argument("--run-dir", type=Path, help="logs, envoy.yaml and state (default: a new temp dir)")
    o = parser.add_argument_group("observability")
    o.add_argument(
        "--metrics-port", type=int, default=TelemetryConfig().metrics_port,
        help="routers' Prometheus port (replicas take the next ones; a free port where taken; 0 = off)",
    )  # fmt: skip
    o.add_argument(
        "--otlp", metavar="HOST:PORT",
        help=f"OTLP/gRPC collector: tracing on in Envoy and the routers (default: ${OTLP_ENV}, else off)",
    )  # fmt: skip
    o.add_argument(
        "--served-pool-header", action="store_true",
        help=f"Envoy adds {SERVED_POOL_HEADER}: <pool> to every response (for debugging clients)",
    )  # fmt: skip


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


def stack_options(args: argparse.Namespace) -> StackOptions:
    if not 0.0 <= args.stream_share <= 1.0:
        raise ValueError(f"--stream-share must be within [0, 1], got {args.stream_share}")
    if args.latency_scale < 0:
        raise ValueError(f"--latency-scale must be >= 0, got {args.latency_scale}")
    if not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be within 0..65535, got {args.metrics_port}")
    # The replay reads the router's own decision lines for the report.
    flags = ["--telemetry-json-logs", "true", "--telemetry-log-decisions", "true", *args.router_flag]
    short, long = fleet_shape(args, args.engine)
    return StackOptions(
        short=short,
        long=long,
        engines=engine_fleet(args) if args.engine == "vllm" else None,
        run_dir=args.run_dir,
        router_replicas=args.router_replicas,
        live_load=args.live_load,
        fail_open=not args.fail_closed,
        router_flags=tuple(flags),
        latency_scale=args.latency_scale,
        listen_port=args.port,
        admin_port=args.admin_port,
        state_file=args.state_file,
        supervise=True,
        metrics_port=args.metrics_port,
        otlp=otlp_collector(args.otlp, os.environ),
        layout_overrides={"served_pool_header": SERVED_POOL_HEADER} if args.served_pool_header else {},
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
    opts = stack_options(args)
    _terminate_on_sigterm()
    if args.workload_trace:
        args.workload_trace = TRACE_ALIASES.get(args.workload_trace, args.workload_trace)
        spec = workload_spec_from_args(args)
        if spec.count is None and spec.duration_s is None and spec.rate is not None:
            raise ValueError("--rate needs --duration or --requests (a Poisson replay is otherwise endless)")
        return asyncio.run(replay_main(args, Stack(opts), spec))
    return interactive(Stack(opts))


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
    body = orjson.dumps({"model": stack.model, "max_tokens": 32, "messages": [{"role": "user", "content": "Hello!"}]})
    return "\n".join(
        [
            f"Envoy (OpenAI API):   {stack.url}/v1/chat/completions",
            f"Envoy admin:          {stack.admin_url}",
            f"short pool (direct):  {stack.pool_url('short')}  max-model-len {stack.options.short.max_model_len}",
            f"long pool (direct):   {stack.pool_url('long')}  max-model-len {stack.options.long.max_model_len}",
            *engine_lines(stack),
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


def engine_lines(stack: Stack) -> list[str]:
    """What serves the pools, when it is real vLLM (the model's directory, and the runtime)."""
    engines = stack.options.engines
    if engines is None:
        return []
    return [
        f"pools run vLLM:       {engines.label}",
        f"model:                {engines.model} (as {engines.served_name})",
    ]


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


async def replay_main(args: argparse.Namespace, stack: Stack, spec: Any) -> int:
    main = asyncio.current_task()
    if main is not None:  # SIGTERM cancels like Ctrl-C does under asyncio.run: one cleanup path
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    print(f"starting Envoy, router and two pools (logs in {stack.run_dir}) ...", file=sys.stderr, flush=True)
    try:
        starting = asyncio.create_task(asyncio.to_thread(stack.start))
        requests = await asyncio.to_thread(build_workload, spec)
        if not requests:
            raise ValueError("the workload is empty (check --duration / --requests)")
        planned = await asyncio.to_thread(plan, requests, args.stream_share, spec.seed, model=stack.model)
        await starting
        metrics = "".join(f"; metrics {url}" for url in stack.metrics_urls())
        traces = f"; traces to {stack.options.otlp[0]}:{stack.options.otlp[1]}" if stack.options.otlp else ""
        print(
            f"stack up: {stack.url}; replaying {len(planned)} requests of {spec.trace}{metrics}{traces}",
            file=sys.stderr,
            flush=True,
        )
        return await _replay_and_report(args, stack, spec, planned)
    finally:
        # Not via to_thread: a second Ctrl-C must not abandon the cleanup half way.
        stack.stop()


async def _replay_and_report(args: argparse.Namespace, stack: Stack, spec: Any, planned: list[PlannedRequest]) -> int:
    params = build_router(router_config(stack.options)).calibrator.params
    timeline = CalibrationTimeline(stack.state_file, params)
    replayer = Replayer(stack.url, planned, args.concurrency, args.timeout)
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
        "replay_s": max(horizon, 1e-9),
        "wall_s": wall,
        "stream_share": args.stream_share,
        "seed": spec.seed,
        "mix": str(spec.mix),
        "latency_scale": stack.options.latency_scale,
        "interrupted": interrupted,
        "run_dir": str(stack.run_dir),
    }
    report = build_report(run_info, outcomes, pools, decisions, timeline.points)
    print(render(report), flush=True)
    if args.png:
        save_png(timeline.points, true_ratios(outcomes, decisions), args.png)
        print(f"ratio convergence plot: {args.png}")
    if args.json:
        dump = _dump(report, outcomes, pools, decisions, timeline)
        args.json.write_bytes(orjson.dumps(dump, option=orjson.OPT_INDENT_2))
        print(f"JSON report: {args.json}")
    return 130 if interrupted else 0


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
