"""Trace context in and out of the router.

Envoy hands the caller's context to us in two places: the forwarded HTTP headers (what the client
sent) and the ext_proc gRPC call's metadata (Envoy's own span, when Envoy traces). The HTTP header
wins when both carry one, so a client that propagates its trace keeps it; otherwise the router
span hangs under Envoy's. The propagator is the process-wide one, so ``OTEL_PROPAGATORS`` applies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.trace import Span, set_span_in_context


def extract_parent(headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> Context:
    """Parent context: the HTTP headers' trace context if valid, else the gRPC metadata's, else none.

    The common cases (no context, or context in only one place) cost a single extraction.
    """
    propagator = propagate.get_global_textmap()
    carrier = {k: v for k, v in metadata if isinstance(v, str)} if metadata else {}  # -bin metadata skipped
    fields = propagator.fields
    if not any(f in carrier for f in fields):
        return propagator.extract(headers, context=Context())
    if not any(f in headers for f in fields):
        return propagator.extract(carrier, context=Context())
    return propagator.extract(headers, context=propagator.extract(carrier, context=Context()))


def inject(span: Span) -> dict[str, str]:
    """Headers (``traceparent``, ``tracestate``, ...) that make the upstream continue ``span``'s trace."""
    carrier: dict[str, str] = {}
    propagate.get_global_textmap().inject(carrier, context=set_span_in_context(span))
    return carrier


def _traceparent(headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> str | None:
    value = headers.get("traceparent")
    if value is not None:
        return value
    for key, v in metadata or ():
        if key == "traceparent" and isinstance(v, str):
            return v
    return None


def unsampled_parent(headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> str | None:
    """Trace id of a well-formed W3C parent whose sampled flag is off, else None.

    With a parent-based sampler such a parent yields a non-recording span anyway; recognising it from
    the header's last byte skips the propagator and the SDK (~50 µs a request in CPython), which is
    what keeps tracing cheap when Envoy samples a small share of requests.
    """
    tp = _traceparent(headers, metadata)
    if tp is None or len(tp) != 55 or tp[2] != "-" or tp[35] != "-" or tp[52] != "-":
        return None
    try:
        flags = int(tp[53:], 16)
        int(tp[3:35], 16)
        int(tp[36:52], 16)
    except ValueError:
        return None
    trace_id = tp[3:35]
    if flags & 1 or tp.startswith("ff") or trace_id == "0" * 32:
        return None
    return trace_id
