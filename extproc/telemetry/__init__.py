"""Traces, metrics and structured logs for every routing decision (see docs/observability.md).

``build_observer(cfg)`` is the only entry point the server needs: it returns the observer the
exchanges report to and a shutdown function that flushes exporters and closes the metrics port.
With everything off it returns the plain no-op ``ExchangeObserver`` so routing pays nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from extproc.config import Config
from extproc.server.events import ExchangeObserver
from extproc.telemetry import names
from extproc.telemetry.histograms import HistogramSet, merging
from extproc.telemetry.logs import DecisionLog, JsonLinesFormatter, use_json_lines
from extproc.telemetry.metrics import DecisionMetrics
from extproc.telemetry.observer import TelemetryObserver
from extproc.telemetry.providers import (
    VERSION,
    Shutdown,
    meter_provider,
    metric_readers,
    resource,
    sdk_disabled,
    tracer_provider,
    traces_enabled,
)
from extproc.telemetry.spans import ExchangeSpans

__all__ = [
    "DecisionLog",
    "DecisionMetrics",
    "ExchangeSpans",
    "HistogramSet",
    "JsonLinesFormatter",
    "TelemetryObserver",
    "build_observer",
    "merging",
    "names",
]


def build_observer(
    cfg: Config,
    worker: int = 0,
    env: Mapping[str, str] | None = None,
) -> tuple[ExchangeObserver, Callable[[], None] | None]:
    """The observer for one router process and its shutdown function (None when nothing to stop).

    The runtime the gauges read is given afterwards (``TelemetryObserver.attach``): it needs the
    observer to exist first. ``worker`` offsets the Prometheus port so ``server.workers > 1``
    processes each get their own scrape endpoint.
    """
    t = cfg.telemetry
    env = os.environ if env is None else env
    if t.json_logs:
        use_json_lines(t.log_level)
    decisions = DecisionLog(t.json_logs) if t.log_decisions else None
    shutdowns: list[Shutdown] = []
    spans = metrics = None
    if not sdk_disabled(env):
        res = resource(t, env, worker)
        histograms = HistogramSet(res, InstrumentationScope(names.INSTRUMENTATION_SCOPE, VERSION))
        if traces_enabled(t, env):
            tracers = tracer_provider(t, res, env)
            sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on")
            spans = ExchangeSpans(
                tracers.get_tracer(names.INSTRUMENTATION_SCOPE, VERSION),
                t.capture_content,
                content_max_bytes=t.capture_content_max_bytes,
                provider=t.provider_name,
                parent_based=sampler.startswith("parentbased_")
                and "tracecontext" in env.get("OTEL_PROPAGATORS", "tracecontext"),
            )
            shutdowns.append(tracers.shutdown)
        readers = metric_readers(t, env, worker, shutdowns, histograms)
        if readers:
            meters = meter_provider(readers, res)
            metrics = DecisionMetrics(meters.get_meter(names.INSTRUMENTATION_SCOPE, VERSION), histograms)
            shutdowns.insert(0, meters.shutdown)  # flush metrics before the scrape port closes
    if spans is None and metrics is None and decisions is None:
        return ExchangeObserver(), None
    observer = TelemetryObserver(spans, metrics, decisions)

    def shutdown() -> None:
        for stop in shutdowns:
            stop()

    return observer, shutdown if shutdowns else None
