"""The router's SERVER span: one per HTTP exchange, request headers to end of stream.

Attributes are gathered from the finished ``ExchangeRecord`` and set in one call when the span
ends, because nothing reads a span before it is exported and one locked bulk set is cheaper than
a dozen single ones on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from extproc.server.events import ExchangeRecord
from extproc.telemetry import names as n
from extproc.telemetry.propagation import extract_parent, inject, unsampled_parent

AttrValue = str | bool | int | float


class ExchangeSpans:
    def __init__(self, tracer: Tracer, capture_content: bool = False, parent_based: bool = False) -> None:
        self.tracer = tracer
        self.capture_content = capture_content
        self.parent_based = parent_based  # the sampler follows the parent: unsampled parents need no span

    def start(
        self, record: ExchangeRecord, headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]
    ) -> Span | str:
        """The span, or (parent-based sampling, parent not sampled) just the parent's trace id."""
        if self.parent_based:
            trace_id = unsampled_parent(headers, metadata)
            if trace_id is not None:
                return trace_id
        return self.tracer.start_span(n.SPAN_NAME, context=extract_parent(headers, metadata), kind=SpanKind.SERVER)

    @staticmethod
    def upstream_headers(span: Span) -> dict[str, str]:
        return inject(span)

    def finish(self, span: Span, record: ExchangeRecord) -> None:
        if span.is_recording():
            operation = n.OPERATIONS.get(record.endpoint)
            if operation:
                span.update_name(f"{operation} {record.model}" if record.model else operation)
            span.set_attributes(self.attributes(record))
            if record.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def attributes(self, record: ExchangeRecord) -> dict[str, AttrValue]:
        """Span attributes for a record; prompt text only when the operator opted in.

        Every attribute costs ~2 µs to set and ~3 µs to encode for OTLP, so only what a reader of one
        trace needs is here (the rest is derivable: estimated prompt = total - output reserve).
        """
        a: dict[str, AttrValue] = {n.POOL: record.pool, n.REASON: record.reason}
        if record.detail:
            a[n.DETAIL] = record.detail
        if record.status:
            a[n.HTTP_STATUS] = record.status
        if record.attempts > 1:  # both attempts: pool (tried first) and served_pool (answered)
            a[n.ATTEMPTS] = record.attempts
            a[n.SERVED_POOL] = record.served_pool
        operation = n.OPERATIONS.get(record.endpoint)
        if operation is None:  # not parsed: the decision fields above are all there is
            a[n.URL_PATH] = record.path.split("?", 1)[0]
            return a
        a[n.GEN_AI_OPERATION] = operation
        a[n.ENDPOINT] = record.endpoint
        if record.model:
            a[n.GEN_AI_REQUEST_MODEL] = record.model
        if not record.output_defaulted:
            a[n.GEN_AI_REQUEST_MAX_TOKENS] = record.output_reserve
        a[n.CATEGORY] = record.category
        a[n.TEXT_BYTES] = record.text_bytes
        a[n.EST_TOTAL_TOKENS] = record.estimated_total_tokens
        a[n.RATIO] = record.ratio
        a[n.OUTPUT_RESERVE] = record.output_reserve
        if record.stream:
            a[n.STREAM] = True
        if record.spilled:
            a[n.SPILLED] = True
        if record.pressure_source:
            a[n.SHORT_PRESSURE] = record.short_pressure
            a[n.LONG_PRESSURE] = record.long_pressure
            a[n.PRESSURE_SOURCE] = record.pressure_source
        if record.response_model:
            a[n.GEN_AI_RESPONSE_MODEL] = record.response_model
        if record.usage_source:
            a[n.USAGE_SOURCE] = record.usage_source
            if record.observation != "accepted":
                a[n.OBSERVATION] = record.observation
            if record.prompt_tokens is not None:
                a[n.GEN_AI_INPUT_TOKENS] = record.prompt_tokens
            if record.completion_tokens is not None:
                a[n.GEN_AI_OUTPUT_TOKENS] = record.completion_tokens
            if record.estimate_error_pct is not None:
                a[n.ESTIMATE_ERROR_PCT] = record.estimate_error_pct
        if self.capture_content:
            prompt = prompt_content(record.request_body)
            if prompt is not None:
                a[n.GEN_AI_INPUT_MESSAGES] = prompt
        return a


def prompt_content(body: bytes | None) -> str | None:
    """The request's ``messages`` (chat), ``prompt`` (completions) or ``input`` (responses) as JSON text."""
    if not body:
        return None
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    value = data.get("messages", data.get("prompt", data.get("input")))
    return None if value is None else orjson.dumps(value).decode()
