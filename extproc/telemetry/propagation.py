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
    """Parent context: the HTTP headers' trace context if valid, else the gRPC metadata's, else none."""
    propagator = propagate.get_global_textmap()
    base = Context()
    if metadata:
        carrier = {k: v for k, v in metadata if isinstance(v, str)}  # binary (-bin) metadata is skipped
        base = propagator.extract(carrier, context=base)
    return propagator.extract(headers, context=base)


def inject(span: Span) -> dict[str, str]:
    """Headers (``traceparent``, ``tracestate``, ...) that make the upstream continue ``span``'s trace."""
    carrier: dict[str, str] = {}
    propagate.get_global_textmap().inject(carrier, context=set_span_in_context(span))
    return carrier
