"""``budget-router envoy-config``: render envoy/envoy.yaml (or the paste-in snippets) for given ports.

The flags only choose a layout; what Envoy must agree on with the router (header names, gRPC limit)
comes from the router's own config (``agreed_with``), and the renderer lives in ``extproc.gateway``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from extproc.addresses import Endpoint, parse_endpoint
from extproc.config import MIB, Config, load_config
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
from extproc.options import Command, ConfigError, command_env_prefix, non_defaults, opt, within

_COMPOSE = compose_layout()


def _endpoint(text: str) -> Endpoint:
    return parse_endpoint(text)


def _shown(endpoints: Sequence[Endpoint]) -> str:
    return ",".join(f"{h}:{p}" for h, p in endpoints)


@dataclass(frozen=True)
class EnvoyConfigOptions:
    """Every option of ``budget-router envoy-config``; defaults are the compose stack's layout
    (``compose_layout``) and, for what Envoy must agree on with the router, the router's config."""

    out: Path | None = opt(None, "Write here instead of stdout.", "FILE", aliases=("-o",), shown="stdout")
    snippets: Path | None = opt(None, "Write the paste-in fragments to DIR instead (no other option applies).", "DIR")
    listen: Endpoint = opt(
        (_COMPOSE.listen_host, _COMPOSE.listen_port), "Envoy's listener.", "HOST:PORT", parse=_endpoint,
        shown=_shown([(_COMPOSE.listen_host, _COMPOSE.listen_port)]), example="127.0.0.1:8081",
    )  # fmt: skip
    admin: Endpoint = opt(
        (_COMPOSE.admin_host, _COMPOSE.admin_port), "Envoy's admin interface.", "HOST:PORT", parse=_endpoint,
        shown=_shown([(_COMPOSE.admin_host, _COMPOSE.admin_port)]), example="127.0.0.1:9902",
    )  # fmt: skip
    router: tuple[Endpoint, ...] = opt(
        tuple(_COMPOSE.router), "Router endpoint (repeat for replicas).", "HOST:PORT", parse=_endpoint, repeat=True,
        shown=_shown(_COMPOSE.router), example="10.0.0.5:9002",
    )  # fmt: skip
    short: tuple[Endpoint, ...] = opt(
        tuple(_COMPOSE.short), "Short-pool endpoint (repeat for replicas).", "HOST:PORT", parse=_endpoint,
        repeat=True, shown=_shown(_COMPOSE.short), example="10.0.0.6:8000",
    )  # fmt: skip
    long: tuple[Endpoint, ...] = opt(
        tuple(_COMPOSE.long), "Long-pool endpoint (repeat for replicas).", "HOST:PORT", parse=_endpoint,
        repeat=True, shown=_shown(_COMPOSE.long), example="10.0.0.7:8000",
    )  # fmt: skip
    otlp: Endpoint | None = opt(
        _COMPOSE.otlp, "OTLP/gRPC collector Envoy sends traces to ('none': no tracing).", "HOST:PORT|none",
        parse=_endpoint, shown=_shown([_COMPOSE.otlp]) if _COMPOSE.otlp else "none", example="none",
    )  # fmt: skip
    trace_sampling: float = opt(
        _COMPOSE.trace_sampling_percent, "Percent of requests Envoy traces (Envoy refuses a value outside 0-100).",
        "PERCENT", check=within(0, 100),
    )  # fmt: skip
    config: Path | None = opt(
        None, "The router's YAML config: the header name and value and the gRPC limit follow it.", "FILE",
        aliases=("-c",), example=None,
    )  # fmt: skip
    header_name: str | None = opt(
        None, "Routing header.", "HEADER", shown=f"the router's, {_COMPOSE.header_name}", example="x-pool"
    )
    short_value: str | None = opt(
        None, "Short pool's header value.", "VALUE", shown=f"the router's, {_COMPOSE.short_value}", example="tiny"
    )
    fail_closed: bool = opt(False, "Router errors become 503 instead of failing open to the long pool.")
    response_processing: bool = opt(_COMPOSE.with_response_processing, "The router sees responses too.")
    ext_proc: bool = opt(_COMPOSE.ext_proc, "Run the router (off: routing header only).")
    keep_client_header: bool = opt(False, "Trust a client-sent routing header.")
    short_failover: bool = opt(
        _COMPOSE.short_failover, "Short requests go long when no short host is healthy (off: they fail, 503)."
    )
    short_net: str = opt(
        _COMPOSE.short_net, "Retry a short request the short pool rejects (400, refused, reset) once on the long "
        "pool: composite (Envoy >= 1.37), priority_group (>= 1.40) or off.", choices=SHORT_NETS,
    )  # fmt: skip
    max_body_bytes: int = opt(_COMPOSE.max_body_bytes, "Largest request body Envoy buffers for the router (413 above).")
    grpc_max_message_bytes: int | None = opt(
        None, "gRPC message limit towards the router.", shown=f"the router's server.max_message_bytes, "
        f"{_COMPOSE.grpc_max_message_bytes}", example=str(64 * MIB),
    )  # fmt: skip
    message_timeout_s: float = opt(
        _COMPOSE.message_timeout_s,
        "Envoy's wait for each router answer before it fails open (or closed): what a hung router costs a "
        "request; the router answers in ~1-2 ms.",
    )
    route_timeout_s: float = opt(_COMPOSE.route_timeout_s, "Longest a request may take upstream (0 = none).")
    access_log: str | None = opt(
        _COMPOSE.access_log_path, "Access log path ('none': no access log).", "PATH|none", example="/tmp/access.log"
    )
    served_pool_header: str = opt(
        _COMPOSE.served_pool_header, f"Add a response header naming the pool that answered (the bare flag: "
        f"{SERVED_POOL_HEADER}).", "NAME", const=SERVED_POOL_HEADER, shown="off", example="x-served-by",
    )  # fmt: skip


OPTIONS = Command(EnvoyConfigOptions, command_env_prefix("envoy-config"))
add_arguments = OPTIONS.add_arguments


@dataclass(frozen=True)
class Rendering:
    """What the command writes, and where (``snippets`` set: the fixed paste-in fragments there)."""

    layout: EnvoyLayout
    out: Path | None
    snippets: Path | None


def prepare(o: EnvoyConfigOptions) -> Rendering:
    if o.snippets is not None:
        ignored = [flag for flag in non_defaults(o) if flag != "--snippets"]
        if ignored:
            raise ConfigError(f"--snippets writes the fixed paste-in fragments; {', '.join(ignored)} would do nothing")
    agreed = agreed_with(load_config(o.config) if o.config else Config())
    base = dataclasses.replace(_COMPOSE, **agreed)
    try:
        layout = dataclasses.replace(
            base,
            listen_host=o.listen[0],
            listen_port=o.listen[1],
            admin_host=o.admin[0],
            admin_port=o.admin[1],
            router=o.router,
            short=o.short,
            long=o.long,
            otlp=o.otlp,
            header_name=o.header_name or base.header_name,
            short_value=o.short_value or base.short_value,
            failure_mode_allow=not o.fail_closed,
            with_response_processing=o.response_processing,
            ext_proc=o.ext_proc,
            strip_client_header=not o.keep_client_header,
            short_failover=o.short_failover,
            short_net=o.short_net,
            trace_sampling_percent=o.trace_sampling,
            max_body_bytes=o.max_body_bytes,
            grpc_max_message_bytes=o.grpc_max_message_bytes or base.grpc_max_message_bytes,
            message_timeout_s=o.message_timeout_s,
            route_timeout_s=o.route_timeout_s,
            access_log_path=o.access_log,
            served_pool_header=o.served_pool_header,
        )
    except ValueError as exc:  # the layout's own checks, between options
        raise ConfigError(str(exc)) from None
    return Rendering(layout, o.out, o.snippets)


def run(args: argparse.Namespace) -> int:
    r = prepare(OPTIONS.from_args(args))
    if r.snippets is not None:
        r.snippets.mkdir(parents=True, exist_ok=True)
        for name, text in render_snippets().items():
            (r.snippets / name).write_text(text)
        return 0
    text = render(r.layout, COMPOSE_COMMAND if r.layout == _COMPOSE else None)
    if r.out is not None:
        r.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0
