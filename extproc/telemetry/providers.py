"""OpenTelemetry SDK set-up from ``TelemetryConfig`` plus the standard ``OTEL_*`` variables.

Providers are built per router process and not installed globally, so tests (and several
observers in one process) never fight over global state. What the environment controls:
``OTEL_SDK_DISABLED`` (everything off), ``OTEL_TRACES_EXPORTER`` (``otlp``/``console`` switch
traces on, ``none`` keeps them off), ``OTEL_METRICS_EXPORTER`` (``otlp`` adds the OTLP push),
``OTEL_EXPORTER_OTLP_*`` (endpoint, headers, TLS, timeouts when ``otlp_endpoint`` is empty),
``OTEL_TRACES_SAMPLER[_ARG]``, ``OTEL_BSP_*``, ``OTEL_METRIC_EXPORT_INTERVAL``,
``OTEL_SERVICE_NAME`` (wins over ``service_name``), ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_PROPAGATORS``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from importlib import metadata

from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from extproc.config import TelemetryConfig
from extproc.telemetry.histograms import HistogramSet, merging

log = logging.getLogger("budget_router.telemetry")
Shutdown = Callable[[], None]


def _version() -> str:
    try:
        return metadata.version("budget-router")
    except metadata.PackageNotFoundError:
        return "0+unknown"


VERSION = _version()


def sdk_disabled(env: Mapping[str, str]) -> bool:
    return env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def _exporters(env: Mapping[str, str], var: str) -> set[str]:
    return {e.strip().lower() for e in env.get(var, "").split(",") if e.strip()}


def traces_enabled(t: TelemetryConfig, env: Mapping[str, str]) -> bool:
    names = _exporters(env, "OTEL_TRACES_EXPORTER")
    if sdk_disabled(env) or names == {"none"}:
        return False
    return t.traces or bool(names)


def otlp_endpoint(endpoint: str) -> str | None:
    """``host:port`` means plaintext gRPC (as in the compose stack); a URL keeps its scheme."""
    if not endpoint:
        return None
    return endpoint if "://" in endpoint else f"http://{endpoint}"


def resource(t: TelemetryConfig, env: Mapping[str, str], worker: int = 0) -> Resource:
    attrs: dict[str, str | int] = {
        "service.name": env.get("OTEL_SERVICE_NAME") or t.service_name,
        "service.version": VERSION,
        "budget_router.worker": worker,
    }
    return Resource.create(attrs)  # adds OTEL_RESOURCE_ATTRIBUTES underneath these


def tracer_provider(t: TelemetryConfig, res: Resource, env: Mapping[str, str]) -> TracerProvider:
    exporter: SpanExporter
    if "console" in _exporters(env, "OTEL_TRACES_EXPORTER"):
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_endpoint(t.otlp_endpoint))
    provider = TracerProvider(resource=res)  # sampler from OTEL_TRACES_SAMPLER (default parent-based on)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def metric_readers(
    t: TelemetryConfig, env: Mapping[str, str], worker: int, shutdowns: list[Shutdown], histograms: HistogramSet
) -> list[MetricReader]:
    """Prometheus scrape endpoint (port + worker index, so workers never collide) and/or OTLP push."""
    readers: list[MetricReader] = []
    if t.metrics_port > 0:
        reader = _prometheus(t.metrics_host, t.metrics_port + worker, shutdowns, histograms)
        if reader is not None:
            readers.append(reader)
    if t.otlp_metrics or "otlp" in _exporters(env, "OTEL_METRICS_EXPORTER"):
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        exporter = OTLPMetricExporter(endpoint=otlp_endpoint(t.otlp_endpoint))
        readers.append(merging(PeriodicExportingMetricReader)(histograms, exporter))
    return readers


def _prometheus(host: str, port: int, shutdowns: list[Shutdown], histograms: HistogramSet) -> MetricReader | None:
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry()
    try:
        server, _thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        # Refused up front (exit 2) rather than run blind: an operator who asked for metrics and gets
        # none finds out only when a dashboard is empty. 0 turns them off.
        from extproc.config import ConfigError

        raise ConfigError(
            f"telemetry.metrics_port: cannot serve metrics on {host}:{port}: {exc.strerror or exc} (0 = off)"
        ) from None
    log.info("Prometheus metrics on http://%s:%d/metrics", host, port)

    def stop() -> None:
        server.shutdown()
        server.server_close()

    shutdowns.append(stop)
    return merging(PrometheusMetricReader)(histograms, registry=registry, scope_info_enabled=False)


def meter_provider(readers: list[MetricReader], res: Resource) -> MeterProvider:
    # No exemplars: they would cost a context lookup per measurement for little use here.
    return MeterProvider(metric_readers=readers, resource=res, exemplar_filter=AlwaysOffExemplarFilter())
