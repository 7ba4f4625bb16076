"""The telemetry observer: spans, metrics and decision logs behind the exchange's hooks.

Each part is optional and absent (not a no-op object) when off, so a disabled feature costs one
``is None`` test. A hook never raises: a telemetry fault is logged once per hook and routing goes
on untouched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Span, Status, StatusCode, get_current_span

from extproc.server.events import REQUEST_ID_HEADER, Decided, ExchangeObserver, ExchangeRecord, Observed
from extproc.telemetry.logs import DecisionLog
from extproc.telemetry.metrics import DecisionMetrics
from extproc.telemetry.propagation import extract_parent
from extproc.telemetry.spans import ExchangeSpans

if TYPE_CHECKING:
    from extproc.server.exchange import RouterRuntime
    from extproc.server.state_store import StateStore

log = logging.getLogger("budget_router.telemetry")


class _Live:
    """Per-exchange telemetry state between ``started`` and ``finished``."""

    __slots__ = ("request_id", "span", "trace_id")

    def __init__(self, span: Span | None, trace_id: str, request_id: str) -> None:
        self.span, self.trace_id, self.request_id = span, trace_id, request_id


def _trace_id_of(span: Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


class TelemetryObserver(ExchangeObserver):
    def __init__(
        self,
        spans: ExchangeSpans | None = None,
        metrics: DecisionMetrics | None = None,
        decisions: DecisionLog | None = None,
    ) -> None:
        self.spans, self.metrics, self.decisions = spans, metrics, decisions
        self._per_exchange = spans is not None or decisions is not None
        self._live: dict[int, _Live] = {}  # record.key -> state, from started() to finished()
        self._faulted: set[str] = set()

    def attach(self, runtime: RouterRuntime, store: StateStore | None = None) -> None:
        """Give the gauges what they read (calibrator state, in-flight per pool, state file tallies)."""
        if self.metrics is not None:
            self.metrics.attach(runtime, store)

    @property
    def live_exchanges(self) -> int:
        return len(self._live)

    def _fault(self, hook: str) -> None:
        if hook not in self._faulted:
            self._faulted.add(hook)
            log.warning("telemetry hook %s failed; routing is unaffected (logged once)", hook, exc_info=True)

    # -- hooks -----------------------------------------------------------------------------------
    def started(self, record: ExchangeRecord, headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> None:
        if not self._per_exchange:
            return
        try:
            if self.spans is not None:
                started = self.spans.start(record, headers, metadata)
                span: Span | None = None if isinstance(started, str) else started
                trace_id = started if isinstance(started, str) else _trace_id_of(started)
            else:  # logs only: still name the caller's trace so lines join Envoy's spans
                span, trace_id = None, _trace_id_of(get_current_span(extract_parent(headers, metadata)[0]))
            self._live[record.key] = _Live(span, trace_id, headers.get(REQUEST_ID_HEADER, ""))
        except Exception:
            self._fault("started")

    def upstream_headers(self, record: ExchangeRecord) -> Mapping[str, str]:
        if self.spans is None:
            return {}
        try:
            live = self._live.get(record.key)
            if live is not None and live.span is not None:
                return self.spans.upstream_headers(live.span)
        except Exception:
            self._fault("upstream_headers")
        return {}

    def decided(self, event: Decided) -> None:
        if self.metrics is not None:
            self._guard("decided", self.metrics.decided, event)

    def follows_response(self, event: Decided) -> bool:
        if self.decisions is not None:
            return True  # every line carries the status
        live = self._live.get(event.key)
        return live is not None and live.span is not None

    def observed(self, event: Observed) -> None:
        if self.metrics is not None:
            self._guard("observed", self.metrics.observed, event)

    def failed(self, record: ExchangeRecord, phase: str) -> None:
        try:
            if self.metrics is not None:
                self.metrics.errors.add(phase)
            live = self._live.get(record.key)
            if live is not None and live.span is not None:
                live.span.set_status(Status(StatusCode.ERROR, f"router error in {phase}"))
        except Exception:
            self._fault("failed")

    def trace_id(self, record: ExchangeRecord) -> str:
        live = self._live.get(record.key)
        return "" if live is None else live.trace_id

    def finished(self, record: ExchangeRecord) -> None:
        if self.metrics is not None:
            self._guard("finished.metrics", self.metrics.finished, record)
        if not self._per_exchange:
            return
        live = self._live.pop(record.key, None)
        if live is None:
            return
        if live.span is not None and self.spans is not None:
            try:
                self.spans.finish(live.span, record)
            except Exception:
                self._fault("finished.span")
        if self.decisions is not None:
            try:
                self.decisions.finished(record, live.trace_id, live.request_id)
            except Exception:
                self._fault("finished.log")

    def _guard(self, hook: str, fn: Callable[[Any], None], event: Decided | Observed | ExchangeRecord) -> None:
        try:
            fn(event)
        except Exception:
            self._fault(hook)
