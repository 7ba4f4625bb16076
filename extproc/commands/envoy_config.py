"""``budget-router envoy-config``: render envoy/envoy.yaml (or the paste-in snippets) for given ports.

The flags only choose a layout; what Envoy must agree on with the router (header names, gRPC limit)
comes from the router's own config (``agreed_with``), and the renderer lives in ``extproc.gateway``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from extproc.addresses import parse_endpoint
from extproc.config import Config, load_config
from extproc.gateway.envoy_config import (
    COMPOSE_COMMAND,
    SERVED_POOL_HEADER,
    SHORT_NETS,
    EnvoyLayout,
    agreed_with,
    compose_layout,
    render,
    render_snippets,
)


def _percent(text: str) -> float:
    """A share in percent; Envoy refuses a config whose sampling lies outside 0..100."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be within 0..100, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = compose_layout()
    parser.add_argument("--out", "-o", help="write here instead of stdout")
    parser.add_argument("--snippets", metavar="DIR", help="write the paste-in fragments to DIR instead")
    parser.add_argument("--listen", default=f"{d.listen_host}:{d.listen_port}", help="listener HOST:PORT")
    parser.add_argument("--admin", default=f"{d.admin_host}:{d.admin_port}", help="admin HOST:PORT")
    for name in ("router", "short", "long"):
        parser.add_argument(
            f"--{name}",
            action="append",
            metavar="HOST:PORT",
            help=f"{name} endpoint (repeat for replicas); default {', '.join(f'{h}:{p}' for h, p in getattr(d, name))}",
        )
    parser.add_argument("--otlp", default="otel-collector:4317", help="OTLP/gRPC collector HOST:PORT or 'none'")
    parser.add_argument(
        "--trace-sampling", type=_percent, default=d.trace_sampling_percent, metavar="PERCENT",
        help=f"percent of requests Envoy traces, 0-100 (default {d.trace_sampling_percent:g})",
    )  # fmt: skip
    parser.add_argument("--config", "-c", help="the router's YAML config: header name/value and gRPC limit follow it")
    parser.add_argument("--header-name", help=f"routing header (default: the router's, {d.header_name})")
    parser.add_argument("--short-value", help=f"short pool's header value (default: the router's, {d.short_value})")
    parser.add_argument("--fail-closed", action="store_true", help="router errors become 503, not fail-open")
    parser.add_argument("--no-response-processing", action="store_true", help="router sees requests only")
    parser.add_argument("--no-ext-proc", action="store_true", help="routing header only (no router)")
    parser.add_argument("--keep-client-header", action="store_true", help="trust a client-sent routing header")
    parser.add_argument(
        "--no-short-failover",
        action="store_true",
        help="short requests fail (503) instead of going long when no short host is healthy",
    )
    parser.add_argument(
        "--short-net",
        choices=SHORT_NETS,
        default=d.short_net,
        help="retry a short request the short pool rejects (400, refused, reset) once on the long pool",
    )
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    parser.add_argument(
        "--grpc-max-message-bytes",
        type=int,
        help=f"default: the router's server.max_message_bytes ({d.grpc_max_message_bytes})",
    )
    parser.add_argument(
        "--message-timeout-s", type=float, default=d.message_timeout_s, metavar="SECONDS",
        help=f"Envoy's wait for each router answer before it fails open/closed (default: {d.message_timeout_s:g}; "
        "the router answers in ~1-2 ms, so this bounds what a hung router costs a request)",
    )  # fmt: skip
    parser.add_argument("--route-timeout-s", type=float, default=d.route_timeout_s)
    parser.add_argument("--access-log", default=d.access_log_path, help="access log path or 'none'")
    parser.add_argument(
        "--served-pool-header", nargs="?", const=SERVED_POOL_HEADER, default=d.served_pool_header, metavar="NAME",
        help=f"add a response header naming the pool that answered (name: {SERVED_POOL_HEADER}; off unless given)",
    )  # fmt: skip


def layout_from_args(args: argparse.Namespace) -> EnvoyLayout:
    agreed = agreed_with(load_config(args.config) if args.config else Config())
    base = dataclasses.replace(compose_layout(), **agreed)
    listen_host, listen_port = parse_endpoint(args.listen)
    admin_host, admin_port = parse_endpoint(args.admin)
    return dataclasses.replace(
        base,
        listen_host=listen_host,
        listen_port=listen_port,
        admin_host=admin_host,
        admin_port=admin_port,
        router=[parse_endpoint(e) for e in args.router] if args.router else base.router,
        short=[parse_endpoint(e) for e in args.short] if args.short else base.short,
        long=[parse_endpoint(e) for e in args.long] if args.long else base.long,
        otlp=None if args.otlp.lower() == "none" else parse_endpoint(args.otlp),
        header_name=args.header_name or base.header_name,
        short_value=args.short_value or base.short_value,
        failure_mode_allow=not args.fail_closed,
        with_response_processing=not args.no_response_processing,
        ext_proc=not args.no_ext_proc,
        strip_client_header=not args.keep_client_header,
        short_failover=not args.no_short_failover,
        short_net=args.short_net,
        trace_sampling_percent=args.trace_sampling,
        max_body_bytes=args.max_body_bytes,
        grpc_max_message_bytes=args.grpc_max_message_bytes or base.grpc_max_message_bytes,
        message_timeout_s=args.message_timeout_s,
        route_timeout_s=args.route_timeout_s,
        access_log_path=None if args.access_log.lower() == "none" else args.access_log,
        served_pool_header=args.served_pool_header,
    )


def run(args: argparse.Namespace) -> int:
    if args.snippets:
        target = Path(args.snippets)
        target.mkdir(parents=True, exist_ok=True)
        for name, text in render_snippets().items():
            (target / name).write_text(text)
        return 0
    layout = layout_from_args(args)
    text = render(layout, COMPOSE_COMMAND if layout == compose_layout() else None)
    if args.out:
        Path(args.out).write_text(text)
    else:
        sys.stdout.write(text)
    return 0
