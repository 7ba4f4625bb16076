"""Trace context in and out of the router, following the sampling decision Envoy made.

Envoy hands us context in two places: the ext_proc gRPC call's metadata (Envoy's own span, present
when Envoy traces) and the forwarded HTTP headers (what the client sent). Envoy already decided
whether this request is sampled (its sampling percentage, the client's header, ``x-request-id``), and
its span is the one the client's trace continues through, so the metadata is the parent whenever it
is valid. A client header in the same trace adds nothing; one in another trace (Envoy started a new
trace, e.g. a non-UUID ``x-request-id`` or ``tracing.random_sampling``) becomes a span link, never
the parent, so the router span lands in Envoy's trace with Envoy's decision. Without metadata the
first ``traceparent`` header is the parent (Envoy reads the first of duplicates; the header map keeps
it). The propagator is the process-wide one, so ``OTEL_PROPAGATORS`` applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanContext, get_current_span, set_span_in_context

from extproc.server.events import envoy_traceparent, trace_id_of


def _context_of(carrier: Mapping[str, str]) -> SpanContext | None:
    ctx = get_current_span(propagate.get_global_textmap().extract(carrier, context=Context())).get_span_context()
    return ctx if ctx.is_valid else None


def extract_parent(headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> tuple[Context, list[Link]]:
    """Parent context (Envoy's metadata if valid, else the HTTP headers', else none) and the links.

    The common cases (no context, or context in only one place) cost a single extraction.
    """
    propagator = propagate.get_global_textmap()
    carrier = {k: v for k, v in metadata if isinstance(v, str)} if metadata else {}  # -bin metadata skipped
    fields = propagator.fields
    if not any(f in carrier for f in fields):
        return propagator.extract(headers, context=Context()), []
    envoy = propagator.extract(carrier, context=Context())
    envoy_span = get_current_span(envoy).get_span_context()
    if not envoy_span.is_valid:
        return propagator.extract(headers, context=Context()), []
    if not any(f in headers for f in fields):
        return envoy, []
    client = _context_of(headers)
    if client is None or client.trace_id == envoy_span.trace_id:
        return envoy, []
    return envoy, [Link(client)]


def inject(span: Span) -> dict[str, str]:
    """Headers (``traceparent``, ``tracestate``, ...) that make the upstream continue ``span``'s trace."""
    carrier: dict[str, str] = {}
    propagate.get_global_textmap().inject(carrier, context=set_span_in_context(span))
    return carrier


def unsampled_parent(headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> str | None:
    """Trace id of a well-formed W3C parent (the one Envoy's decision is in) whose sampled flag is
    off, else None.

    With a parent-based sampler such a parent yields a non-recording span anyway; recognising it from
    the header's last byte skips the propagator and the SDK (~50 µs a request in CPython), which is
    what keeps tracing cheap when Envoy samples a small share of requests.
    """
    tp = envoy_traceparent(headers, metadata)
    trace_id = trace_id_of(tp)
    if trace_id is None or int(tp[53:], 16) & 1:  # type: ignore[index]
        return None
    return trace_id
