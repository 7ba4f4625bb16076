"""``budget-router envoy-config``: the one renderer for every Envoy configuration the product ships.

The compose stack's ``envoy/envoy.yaml``, the paste-in ``envoy/snippets/`` and the embedded stack's
loopback config all come out of :func:`render` (or its fragment helpers), so a setting fixed here is
fixed everywhere; tests compare the committed files with a fresh render so they cannot drift.

Safety rules baked in (see envoy/README.md for the reasoning):
* the default route is the **long** pool: a missing header, a router outage under fail-open or an
  unknown path can never overflow the short pool's context window;
* a client-supplied routing header is removed before routing (early header mutation), so only the
  router can select the short pool;
* buffer, HTTP/2 window and gRPC message limits are raised together so a BUFFERED body up to
  ``max_body_bytes`` reaches the router, and Envoy answers 413 above it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from extproc.addresses import Endpoint, check_port
from extproc.config import MIB, REASON_HEADER, Config, RoutingConfig, ServerConfig
from extproc.envoy_names import (
    ATTEMPT_COUNT_HEADER,
    LONG_CLUSTER,
    OTEL_CLUSTER,
    ROUTER_CLUSTER,
    SHORT_CLUSTER,
    SHORT_FAILOVER_CLUSTER,
    SHORT_NET_CLUSTER,
)

EXT_PROC_FILTER = "envoy.filters.http.ext_proc"
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"
# Every pool endpoint carries its pool's name as host metadata, so logs and headers name the pool that
# really served even when the route's cluster is an aggregate (failover, or a retry onto another pool).
POOL_METADATA_NAMESPACE = "budget_router"
SERVED_POOL = f"%UPSTREAM_METADATA({POOL_METADATA_NAMESPACE}:pool)%"
CLUSTER_POOLS = {SHORT_CLUSTER: "short", LONG_CLUSTER: "long"}
SERVED_POOL_HEADER = "x-budget-pool-served"  # the name the opt-in served-pool header gets
# Response-body modes the router may switch to with mode_override: STREAMED for SSE (so a long
# generation is never buffered whole) and NONE once it needs nothing more from the response.
OVERRIDE_RESPONSE_BODY_MODES = ("STREAMED", "NONE")
# The net under the short route (see envoy/README.md): "composite" (a composite cluster, Envoy >= 1.37,
# attempt N goes to its N-th sub-cluster), "priority_group" (the route's priority-group cluster specifier,
# Envoy >= 1.40, re-picked on retry by refresh_cluster_on_retry) or "off" (a short-pool error reaches the
# client). Both nets retry the same conditions once, on the long pool.
SHORT_NETS = ("composite", "priority_group", "off")
# Every 400 is retried: Envoy cannot read the body to tell vLLM's context-length 400 from another 400.
NET_RETRY_ON = "connect-failure,reset,refused-stream,retriable-status-codes"
NET_RETRY_STATUS_CODES = (400,)
NET_RETRY_BACKOFF_S = 0.001  # a context-length 400 is not load: resend at once (Envoy's default waits ~25 ms)
# Filter-state fields ext_proc records per stream (Envoy >= 1.31); logged so operators can read the
# router's overhead from Envoy's side of the wire.
EXT_PROC_LOG_FIELDS = (
    "request_header_latency_us",
    "request_body_total_latency_us",
    "response_header_latency_us",
    "response_body_total_latency_us",
    "bytes_sent",
    "bytes_received",
)
# Envoy's wait for one router answer before it fails open (long pool) or closed. The router answers a
# message in ~1-2 ms (docs/hardening.md: decision time is bounded whatever the body, worst case ~10 ms
# of CPU; a 16 MiB body's transfer and parse ~0.1 s), and 0.5 s is far above any answer it gives
# while it works, yet a hung process costs each request at most that: Envoy's default (200 ms) is
# too close to a big body's transfer on a busy host, 30 s turned a hang into 30 s stalls.
MESSAGE_TIMEOUT_S = 0.5
# Envoy's gRPC health check of the router, every ROUTER_HEALTH_INTERVAL_S: a process that does not
# answer within the timeout fails the check; two in a row take it out of rotation (panic threshold 0:
# requests then fail open without waiting on it at all), so a hang is noticed within ~4 s and only
# the requests of those seconds pay the message timeout.
ROUTER_HEALTH_INTERVAL_S = 1.0
ROUTER_HEALTH_TIMEOUT_S = 1.0
# Pool connections idle this long are closed: without it Envoy kept every connection it ever opened
# (1,663 idle ones after 2,000 clients), each one a file descriptor and buffers on both sides.
POOL_IDLE_TIMEOUT_S = 60.0
# Client-sent x-envoy-* headers are Envoy's own vocabulary (x-envoy-original-path fills the access
# log's path, x-envoy-retry-on or x-envoy-upstream-rq-timeout-ms steer retries and timeouts, and Envoy
# trusts them from "internal" addresses, which include every private network): removed before routing.
ENVOY_HEADER_PREFIX = "x-envoy-"
_H2_WINDOW_MAX = 2**31 - 1
_HEADER_RE = re.compile(r"^[a-z0-9!#$%&'*+.^_`|~-]+$")
# What Envoy and the router must agree on defaults to the router's own config (one source).
_ROUTING, _SERVER = RoutingConfig(), ServerConfig()


@dataclass(frozen=True)
class EnvoyLayout:
    """Where everything listens and how hard Envoy may lean on the router; defaults = compose stack."""

    listen_host: str = "0.0.0.0"
    listen_port: int = 8080
    admin_host: str = "0.0.0.0"
    admin_port: int = 9901
    router: Sequence[Endpoint] = (("router", 9002),)
    short: Sequence[Endpoint] = (("vllm-short", 8000),)
    long: Sequence[Endpoint] = (("vllm-long", 8000),)
    header_name: str = _ROUTING.header_name
    short_value: str = _ROUTING.short_value
    ext_proc: bool = True
    failure_mode_allow: bool = True
    with_response_processing: bool = True
    strip_client_header: bool = True
    # Other headers only the router may set (its optional decision-reason header); stripped with the pool header.
    owned_headers: tuple[str, ...] = (REASON_HEADER,)
    otlp: Endpoint | None = None
    service_name: str = "envoy-budget-router"
    # Share of requests Envoy traces. 100 suits a demo; in production ~1-10 % keeps the router's tracing
    # cost low (it creates no span for an unsampled parent).
    trace_sampling_percent: float = 100.0
    max_body_bytes: int = 30 * MIB
    grpc_max_message_bytes: int = _SERVER.max_message_bytes
    message_timeout_s: float = MESSAGE_TIMEOUT_S
    max_message_timeout_s: float = 120.0
    route_timeout_s: float = 600.0
    stream_idle_timeout_s: float = 600.0
    router_health_interval_s: float = ROUTER_HEALTH_INTERVAL_S
    router_health_timeout_s: float = ROUTER_HEALTH_TIMEOUT_S
    # The router is a local gRPC hop (same host or pod network): a connect slower than this is a dead
    # replica, and the request that finds out waits this long before failing open.
    router_connect_timeout_s: float = 0.25
    pool_health_interval_s: float = 5.0
    # Route "short" through an aggregate cluster [pool_short, pool_long]: when no short host is healthy,
    # short requests (which always fit the long pool) go long instead of failing.
    short_failover: bool = True
    # Retry a short request once on the long pool when the short pool answers 400 or fails to connect.
    short_net: str = "priority_group"
    pool_health_path: str = "/health"
    pool_idle_timeout_s: float = POOL_IDLE_TIMEOUT_S
    max_concurrent_requests: int = 10_000
    access_log_path: str | None = "/dev/stdout"
    # Response header naming the pool that answered (for debugging clients); "" = not sent.
    served_pool_header: str = ""

    def __post_init__(self) -> None:
        for name in ("router", "short", "long"):
            object.__setattr__(self, name, _endpoints(getattr(self, name), name))
        if self.otlp is not None:
            object.__setattr__(self, "otlp", _endpoints([self.otlp], "otlp")[0])
        for name in ("listen_port", "admin_port"):
            check_port(getattr(self, name), name)
        for name in ("header_name", "served_pool_header"):
            value = getattr(self, name)
            if (value or name == "header_name") and not _HEADER_RE.match(value):
                raise ValueError(f"{name} {value!r} must be a lower-case HTTP header token")
        if not self.short_value:
            raise ValueError("short_value must not be empty")
        if self.max_body_bytes < 64 * 1024:
            raise ValueError("max_body_bytes must be >= 64 KiB")
        if self.grpc_max_message_bytes < self.max_body_bytes + MIB:
            raise ValueError(
                "grpc_max_message_bytes must exceed max_body_bytes by >= 1 MiB (headers and framing "
                "travel in the same gRPC message as a BUFFERED body)"
            )
        if not 0 < self.message_timeout_s <= 3600 or not 0 <= self.max_message_timeout_s <= 3600:
            raise ValueError("message timeouts must be within (0, 3600] seconds")
        if self.route_timeout_s < 0 or self.stream_idle_timeout_s < 0:
            raise ValueError("timeouts must be >= 0 (0 disables)")
        if self.max_concurrent_requests < 1:
            raise ValueError("max_concurrent_requests must be >= 1")
        if not self.pool_idle_timeout_s > 0:
            raise ValueError("pool_idle_timeout_s must be > 0")
        if not 0 < self.router_health_timeout_s <= 60:
            raise ValueError("router_health_timeout_s must be within (0, 60] seconds")
        if not 0 < self.router_connect_timeout_s <= 60:
            raise ValueError("router_connect_timeout_s must be within (0, 60] seconds")
        if not 0 <= self.trace_sampling_percent <= 100:  # Envoy rejects the config otherwise
            raise ValueError(f"trace_sampling_percent must be within [0, 100], got {self.trace_sampling_percent:g}")
        if self.short_net not in SHORT_NETS:
            raise ValueError(f"short_net must be one of {', '.join(SHORT_NETS)}, got {self.short_net!r}")


def _endpoints(value: Sequence[Endpoint], what: str) -> tuple[Endpoint, ...]:
    out: list[Endpoint] = []
    for item in value:
        host, port = item
        if not isinstance(host, str) or not host or any(c.isspace() for c in host):
            raise ValueError(f"{what}: bad host {host!r}")
        check_port(port, what)
        out.append((host, port))
    if not out:
        raise ValueError(f"{what}: needs at least one host:port")
    return tuple(out)


def _type(message: str) -> str:
    return f"type.googleapis.com/{message}"


def _secs(value: float) -> str:
    return f"{value:g}s"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def circuit_breakers(layout: EnvoyLayout) -> dict[str, Any]:
    """Every in-flight generation holds a connection (HTTP/1.1) or a stream (router, HTTP/2) for its
    whole life; Envoy's default breakers (1024) would cap concurrency far below vLLM's. The net retries
    at most once per request, so a retry is a failover, not load amplification: Envoy's default (3
    concurrent retries, counted on the cluster the route names) would hand misses back as 400s under
    load (flag UO) exactly when the long pool has room for them."""
    limit = layout.max_concurrent_requests
    return {
        "thresholds": [
            {
                "priority": "DEFAULT",
                "max_connections": limit,
                "max_pending_requests": limit,
                "max_requests": limit,
                "max_retries": limit,
            }
        ]
    }


def _cluster(
    name: str,
    endpoints: Sequence[Endpoint],
    *,
    http2: dict[str, Any] | None,
    health_check: dict[str, Any],
    buffer_bytes: int,
    layout: EnvoyLayout,
    panic_threshold: float | None = None,
    connect_timeout_s: float = 5.0,
) -> dict[str, Any]:
    pool = CLUSTER_POOLS.get(name)
    metadata = {"metadata": {"filter_metadata": {POOL_METADATA_NAMESPACE: {"pool": pool}}}} if pool else {}
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if all(_is_ip(h) for h, _ in endpoints) else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": _secs(connect_timeout_s),
        "lb_policy": "LEAST_REQUEST",
        "per_connection_buffer_limit_bytes": buffer_bytes,
        "circuit_breakers": circuit_breakers(layout),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {"lb_endpoints": [{"endpoint": {"address": _address(h, p)}, **metadata} for h, p in endpoints]}
            ],
        },
        "health_checks": [health_check],
    }
    if panic_threshold is not None:
        # update_merge_window 0: Envoy otherwise batches host health changes for up to 1 s before its
        # workers see them, so a restarted router would stay unused (fail-closed: 503s) for that second.
        cluster["common_lb_config"] = {
            "healthy_panic_threshold": {"value": panic_threshold},
            "update_merge_window": "0s",
        }
    if http2 is not None:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                "explicit_http_config": {"http2_protocol_options": http2},
            }
        }
    elif pool is not None:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                "common_http_protocol_options": {"idle_timeout": _secs(layout.pool_idle_timeout_s)},
                "explicit_http_config": {"http_protocol_options": {}},
            }
        }
    return cluster


def _health(interval_s: float, checker: dict[str, Any], timeout_s: float = 2.0) -> dict[str, Any]:
    return {
        "timeout": _secs(timeout_s),
        "interval": _secs(interval_s),
        "no_traffic_interval": _secs(interval_s),
        "unhealthy_threshold": 2,
        "healthy_threshold": 1,
        **checker,
    }


def _h2_windows(nbytes: int) -> dict[str, Any]:
    window = min(max(nbytes, 65535), _H2_WINDOW_MAX)
    return {"initial_stream_window_size": window, "initial_connection_window_size": window}


def short_failover_cluster(layout: EnvoyLayout) -> dict[str, Any]:
    """Aggregate cluster: the short pool while it has healthy hosts, else the long pool."""
    return {
        "name": SHORT_FAILOVER_CLUSTER,
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": circuit_breakers(layout),
        "cluster_type": {
            "name": "envoy.clusters.aggregate",
            "typed_config": {
                "@type": _type("envoy.extensions.clusters.aggregate.v3.ClusterConfig"),
                "clusters": [SHORT_CLUSTER, LONG_CLUSTER],
            },
        },
    }


def short_net_cluster(layout: EnvoyLayout) -> dict[str, Any]:
    """Composite cluster: attempt 1 goes to the short pool (or, with no healthy short host, on to the
    long pool within the same attempt), the retry to the long pool."""
    return {
        "name": SHORT_NET_CLUSTER,
        "connect_timeout": "5s",
        "lb_policy": "CLUSTER_PROVIDED",
        "circuit_breakers": circuit_breakers(layout),
        "cluster_type": {
            "name": "envoy.clusters.composite",
            "typed_config": {
                "@type": _type("envoy.extensions.clusters.composite.v3.ClusterConfig"),
                "clusters": [{"name": SHORT_CLUSTER}, {"name": LONG_CLUSTER}],
            },
        },
    }


def clusters(layout: EnvoyLayout) -> list[dict[str, Any]]:
    """The router (gRPC/HTTP/2), short-pool, long-pool and optional collector clusters."""
    pool_check = {"http_health_check": {"path": layout.pool_health_path}}
    out = [
        _cluster(
            name,
            endpoints,
            http2=None,
            health_check=_health(layout.pool_health_interval_s, pool_check),
            buffer_bytes=layout.max_body_bytes,
            layout=layout,
        )
        for name, endpoints in ((SHORT_CLUSTER, layout.short), (LONG_CLUSTER, layout.long))
    ]
    if layout.short_net == "composite":
        out.append(short_net_cluster(layout))
    elif layout.short_failover:
        out.append(short_failover_cluster(layout))
    if layout.ext_proc:
        router_h2 = {
            **_h2_windows(layout.grpc_max_message_bytes),
            "connection_keepalive": {"interval": "30s", "timeout": "5s"},
        }
        # Panic threshold 0: a draining (NOT_SERVING) or dead router gets no new streams, so Envoy
        # fails open at once instead of waiting on a replica that is going away.
        router = _cluster(
            ROUTER_CLUSTER,
            layout.router,
            http2=router_h2,
            health_check=_health(
                layout.router_health_interval_s,
                {"grpc_health_check": {"service_name": EXT_PROC_SERVICE}},
                layout.router_health_timeout_s,
            ),
            buffer_bytes=layout.grpc_max_message_bytes,
            layout=layout,
            panic_threshold=0.0,
            connect_timeout_s=layout.router_connect_timeout_s,
        )
        # A killed container's address answers nothing (no RST): each request would wait out the
        # connect timeout until two health checks had failed. Failing open, the first failed connect
        # ejects the replica instead, so the next requests go to the long pool at once; the detector
        # ticks every 0.1 s, so a restarted router is used again as soon as its health check passes.
        # Failing closed there is no ejection: it would turn a healthy-again router into 503s.
        if layout.failure_mode_allow:
            router["outlier_detection"] = {
                "split_external_local_origin_errors": True,
                "consecutive_local_origin_failure": 1,
                "enforcing_consecutive_local_origin_failure": 100,
                "interval": "0.1s",
                "base_ejection_time": "1s",
                "max_ejection_time": "2s",
                "max_ejection_percent": 100,
            }
        out.insert(0, router)
    if layout.otlp is not None:
        host, port = layout.otlp
        out.append(
            {
                "name": OTEL_CLUSTER,
                "type": "STATIC" if _is_ip(host) else "STRICT_DNS",
                "dns_lookup_family": "V4_PREFERRED",
                "connect_timeout": "2s",
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": _type("envoy.extensions.upstreams.http.v3.HttpProtocolOptions"),
                        "explicit_http_config": {"http2_protocol_options": {}},
                    }
                },
                "load_assignment": {
                    "cluster_name": OTEL_CLUSTER,
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(host, port)}}]}],
                },
            }
        )
    return out


def processing_mode(layout: EnvoyLayout) -> dict[str, str]:
    """The filter's default mode; the router narrows the response side per request."""
    respond = layout.with_response_processing
    return {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND" if respond else "SKIP",
        "response_body_mode": "BUFFERED" if respond else "NONE",
        "response_trailer_mode": "SKIP",
    }


def allowed_override_modes(layout: EnvoyLayout) -> list[dict[str, str]]:
    """Exactly the overrides the router may send, spelled the way Envoy 1.40 compares them.

    Envoy resolves DEFAULT in the router's ``mode_override`` (headers -> SEND, trailers -> SKIP) and
    then needs an exact match with an entry here, ignoring only ``request_header_mode``; entries are
    taken literally, so each one spells every field out. Two entries per body mode accept both ways a
    router writes the override: the filter's whole mode with ``response_body_mode`` changed, or a
    message that sets only ``response_body_mode`` (request body then reads NONE).
    """
    modes: list[dict[str, str]] = []
    for body in OVERRIDE_RESPONSE_BODY_MODES:
        for request_body in ("BUFFERED", "NONE"):
            modes.append({**processing_mode(layout), "request_body_mode": request_body, "response_body_mode": body})
    return modes


def ext_proc_filter(layout: EnvoyLayout) -> dict[str, Any]:
    """The ext_proc HTTP filter entry (goes before envoy.filters.http.router)."""
    config: dict[str, Any] = {
        "@type": _type("envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor"),
        "grpc_service": {
            "envoy_grpc": {
                "cluster_name": ROUTER_CLUSTER,
                "max_receive_message_length": layout.grpc_max_message_bytes,
            },
            # Bounds the whole gRPC stream, which lives as long as the generation it watches.
            "timeout": _secs(layout.route_timeout_s or 3600),
        },
        "failure_mode_allow": layout.failure_mode_allow,
        "processing_mode": processing_mode(layout),
        "message_timeout": _secs(layout.message_timeout_s),
        "max_message_timeout": _secs(layout.max_message_timeout_s),
        # Errors other than a timeout (fail-closed only) reach the client as 503, not a bare 500.
        "status_on_error": {"code": "ServiceUnavailable"},
    }
    if layout.with_response_processing:
        config["allow_mode_override"] = True
        config["allowed_override_modes"] = allowed_override_modes(layout)
    return {"name": EXT_PROC_FILTER, "typed_config": config}


def http_filters(layout: EnvoyLayout) -> list[dict[str, Any]]:
    router: dict[str, Any] = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": _type("envoy.extensions.filters.http.router.v3.Router")},
    }
    if layout.otlp is not None:
        # One egress span per upstream attempt: a request the net resent shows both pools in the trace.
        router["typed_config"]["start_child_span"] = True
    return [*router_filters(layout), router]


def attempts_header_filter() -> dict[str, Any]:
    """Removes the attempt-count header from the response after the router has read it. Listed before
    ext_proc, it runs after ext_proc on the response path, so clients never see it, router or not."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": _type("envoy.extensions.filters.http.header_mutation.v3.HeaderMutation"),
            "mutations": {"response_mutations": [{"remove": ATTEMPT_COUNT_HEADER}]},
        },
    }


def router_filters(layout: EnvoyLayout) -> list[dict[str, Any]]:
    """The filters this product adds before Envoy's router filter, in order."""
    out = [attempts_header_filter()] if layout.short_net != "off" else []
    return [*out, ext_proc_filter(layout)] if layout.ext_proc else out


def net_retry_policy(layout: EnvoyLayout) -> dict[str, Any]:
    """One retry, at once, for the conditions a long-pool resend fixes: a 400 (context length, or a
    request the long pool rejects just the same) and a short pool that refuses or drops the stream."""
    policy: dict[str, Any] = {
        "retry_on": NET_RETRY_ON,
        "retriable_status_codes": list(NET_RETRY_STATUS_CODES),
        "num_retries": 1,
        "retry_back_off": {"base_interval": _secs(NET_RETRY_BACKOFF_S), "max_interval": _secs(NET_RETRY_BACKOFF_S)},
    }
    if layout.short_net == "priority_group":
        policy["refresh_cluster_on_retry"] = True
    return policy


def attempts_header() -> dict[str, Any]:
    """The attempt count as a response header on the short route: the router reads "2" as "the long
    pool answered the retry" (route-level, so it travels with the routes snippet)."""
    return {
        "header": {"key": ATTEMPT_COUNT_HEADER, "value": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%"},
        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
    }


def net_route_fields(layout: EnvoyLayout) -> dict[str, Any]:
    """Route-level parts of the net: the attempt-count header, and room to resend the whole body
    (without it Envoy abandons the retry, ``retry_or_shadow_abandoned``, and the client gets the 400)."""
    return {"request_body_buffer_limit": layout.max_body_bytes, "response_headers_to_add": [attempts_header()]}


def _short_target(layout: EnvoyLayout) -> dict[str, Any]:
    """Where the short route sends attempt 1 (and, with the net, the retry)."""
    first = SHORT_FAILOVER_CLUSTER if layout.short_failover else SHORT_CLUSTER
    if layout.short_net == "composite":
        return {"cluster": SHORT_NET_CLUSTER}
    if layout.short_net == "priority_group":
        groups = [("short", first), ("long", LONG_CLUSTER)]
        plugin = "envoy.extensions.router.cluster_specifiers.priority_group.v3.PriorityGroupClusterSpecifier"
        spec = {
            "@type": _type(plugin),
            "priority_groups": [
                {"name": name, "clusters": [{"cluster_name": cluster, "weight": 1}]} for name, cluster in groups
            ],
        }
        return {
            "inline_cluster_specifier_plugin": {
                "extension": {"name": "envoy.router.cluster_specifier_plugin.priority_group", "typed_config": spec}
            }
        }
    return {"cluster": first}


def routes(layout: EnvoyLayout) -> list[dict[str, Any]]:
    """Header ``short`` -> short pool (with the net: retried once on the long pool); everything else
    falls through to the long pool."""
    action = {"timeout": _secs(layout.route_timeout_s), "idle_timeout": _secs(layout.stream_idle_timeout_s)}
    short: dict[str, Any] = {**_short_target(layout), **action}
    if layout.short_net != "off":
        short["retry_policy"] = net_retry_policy(layout)
    return [
        {
            "name": "budget_short",
            "match": {
                "prefix": "/",
                "headers": [{"name": layout.header_name, "string_match": {"exact": layout.short_value}}],
            },
            "route": short,
            **(net_route_fields(layout) if layout.short_net != "off" else {}),
        },
        {"name": "budget_default_long", "match": {"prefix": "/"}, "route": {"cluster": LONG_CLUSTER, **action}},
    ]


def virtual_host(layout: EnvoyLayout) -> dict[str, Any]:
    host: dict[str, Any] = {"name": "llm", "domains": ["*"], "routes": routes(layout)}
    if layout.served_pool_header:
        # Evaluated when the response starts, from the endpoint that answered (omitted when none did).
        host["response_headers_to_add"] = [
            {
                "header": {"key": layout.served_pool_header, "value": SERVED_POOL},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }
        ]
    return host


def early_header_mutation(layout: EnvoyLayout) -> list[dict[str, Any]]:
    """Runs before route selection and every filter: only the router may choose the short pool."""
    if not layout.strip_client_header:
        return []
    removals: list[dict[str, Any]] = [{"remove": name} for name in (layout.header_name, *layout.owned_headers)]
    removals.append({"remove_on_match": {"key_matcher": {"prefix": ENVOY_HEADER_PREFIX}}})
    return [
        {
            "name": "envoy.http.early_header_mutation.header_mutation",
            "typed_config": {
                "@type": _type("envoy.extensions.http.early_header_mutation.header_mutation.v3.HeaderMutation"),
                "mutations": removals,
            },
        }
    ]


def access_log_format(layout: EnvoyLayout) -> dict[str, str]:
    fmt = {
        "start_time": "%START_TIME%",
        "method": "%REQ(:METHOD)%",
        "path": "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "status": "%RESPONSE_CODE%",
        "flags": "%RESPONSE_FLAGS%",
        "details": "%RESPONSE_CODE_DETAILS%",
        "request_id": "%REQ(X-REQUEST-ID)%",
        "pool": SERVED_POOL,  # the pool whose endpoint served; null when no upstream was picked
        "routed": f"%REQ({layout.header_name.upper()})%",  # the router's choice; null: none (the long default)
        "cluster": "%UPSTREAM_CLUSTER%",
        # 2 when the short pool failed the request and the net resent it to the long pool.
        "attempts": "%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
        "upstream": "%UPSTREAM_HOST%",
        "bytes_in": "%BYTES_RECEIVED%",
        "bytes_out": "%BYTES_SENT%",
        "duration_ms": "%DURATION%",
        "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    }
    if layout.ext_proc:
        for name in EXT_PROC_LOG_FIELDS:
            fmt[f"extproc_{name}"] = f"%FILTER_STATE({EXT_PROC_FILTER}:FIELD:{name})%"
    return fmt


def connection_manager(layout: EnvoyLayout) -> dict[str, Any]:
    hcm: dict[str, Any] = {
        "@type": _type("envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"),
        "stat_prefix": "budget_ingress",
        "codec_type": "AUTO",
        "generate_request_id": True,
        "preserve_external_request_id": True,
        "stream_idle_timeout": _secs(layout.stream_idle_timeout_s),
        "request_timeout": "0s",
        "http2_protocol_options": _h2_windows(layout.max_body_bytes),
        "route_config": {
            "name": "budget_routes",
            "virtual_hosts": [virtual_host(layout)],
        },
        "http_filters": http_filters(layout),
    }
    early = early_header_mutation(layout)
    if early:
        hcm["early_header_mutation_extensions"] = early
    if layout.access_log_path:
        hcm["access_log"] = [
            {
                "name": "envoy.access_loggers.file",
                "typed_config": {
                    "@type": _type("envoy.extensions.access_loggers.file.v3.FileAccessLog"),
                    "path": layout.access_log_path,
                    "log_format": {"json_format": access_log_format(layout)},
                },
            }
        ]
    if layout.otlp is not None:
        # Envoy's span becomes the parent of the router's (trace context rides in the ext_proc gRPC
        # metadata) and of vLLM's (traceparent header upstream).
        hcm["tracing"] = {
            "random_sampling": {"value": layout.trace_sampling_percent},
            "provider": {
                "name": "envoy.tracers.opentelemetry",
                "typed_config": {
                    "@type": _type("envoy.config.trace.v3.OpenTelemetryConfig"),
                    "grpc_service": {"envoy_grpc": {"cluster_name": OTEL_CLUSTER}, "timeout": "1s"},
                    "service_name": layout.service_name,
                },
            },
        }
    return hcm


def bootstrap(layout: EnvoyLayout) -> dict[str, Any]:
    listener = {
        "name": "llm_ingress",
        "address": _address(layout.listen_host, layout.listen_port),
        # A BUFFERED request body is capped by this limit: above it Envoy answers 413.
        "per_connection_buffer_limit_bytes": layout.max_body_bytes,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": connection_manager(layout),
                    }
                ]
            }
        ],
    }
    return {
        "admin": {"address": _address(layout.admin_host, layout.admin_port)},
        "static_resources": {"listeners": [listener], "clusters": clusters(layout)},
    }


def _header(layout: EnvoyLayout, command: str | None) -> str:
    lines = [
        "# Generated by extproc/gateway/envoy_config.py - do not edit by hand (see envoy/README.md).",
        f"# ext_proc: {'on' if layout.ext_proc else 'off'}, "
        f"failure_mode_allow: {str(layout.failure_mode_allow).lower()}, "
        f"response processing: {'on' if layout.with_response_processing else 'off'}, "
        f"tracing: {'on' if layout.otlp else 'off'}",
    ]
    if command:
        lines.append(f"# Regenerate: {command}")
    return "\n".join(lines) + "\n"


def dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def render(layout: EnvoyLayout, command: str | None = None) -> str:
    """The complete Envoy bootstrap as YAML text (pure: same layout, same bytes)."""
    return _header(layout, command) + dump(bootstrap(layout))


# name -> (where it goes in an existing Envoy config, fragment builder)
SNIPPETS: dict[str, tuple[str, Any]] = {
    "listener.yaml": (
        "keys for your listener (same level as filter_chains)",
        lambda lay: {"per_connection_buffer_limit_bytes": lay.max_body_bytes},
    ),
    "http_connection_manager.yaml": (
        "keys for your HttpConnectionManager typed_config (same level as http_filters)",
        lambda lay: {
            k: v
            for k, v in connection_manager(lay).items()
            if k
            in {
                "stream_idle_timeout",
                "request_timeout",
                "http2_protocol_options",
                "early_header_mutation_extensions",
                "access_log",
            }
        },
    ),
    "ext_proc_filter.yaml": (
        "items of your http_filters list, in this order, placed before envoy.filters.http.router",
        router_filters,
    ),
    "routes.yaml": (
        "the routes of your LLM virtual host, in this order (the catch-all long route last)",
        routes,
    ),
    "clusters.yaml": ("items of static_resources.clusters (edit the addresses)", clusters),
}


def agreed_with(cfg: Config) -> dict[str, Any]:
    """The layout fields that must match the router's settings: the routing header and its short
    value, the headers only the router may set, and the gRPC message limit."""
    owned = dict.fromkeys((REASON_HEADER, *([cfg.routing.reason_header] if cfg.routing.reason_header else [])))
    return {
        "header_name": cfg.routing.header_name,
        "short_value": cfg.routing.short_value,
        "owned_headers": tuple(owned),
        "grpc_max_message_bytes": cfg.server.max_message_bytes,
    }


def snippet_layout() -> EnvoyLayout:
    """Placeholder addresses a user replaces; no tracing (their Envoy has its own)."""
    return EnvoyLayout(router=(("budget-router", 9002),), otlp=None)


def render_snippets(layout: EnvoyLayout | None = None) -> dict[str, str]:
    layout = layout or snippet_layout()
    return {
        name: f"# Paste as {where}.\n{_header(layout, SNIPPETS_COMMAND)}{dump(build(layout))}"
        for name, (where, build) in SNIPPETS.items()
    }


def compose_layout() -> EnvoyLayout:
    """The layout of docker-compose.yml (service names, in-network ports, collector on)."""
    return EnvoyLayout(otlp=("otel-collector", 4317))


COMPOSE_COMMAND = "budget-router envoy-config --out envoy/envoy.yaml"
SNIPPETS_COMMAND = "budget-router envoy-config --snippets envoy/snippets"
