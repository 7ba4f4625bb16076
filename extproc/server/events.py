"""What the exchange tells the outside world: one record per HTTP exchange, and hooks for telemetry.

The exchange logic only fills in an ``ExchangeRecord`` and calls these hooks; traces, metrics and
logs are implemented elsewhere (``extproc.telemetry``) so routing never depends on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

REQUEST_ID_HEADER = "x-request-id"  # Envoy's generate_request_id
TRACEPARENT = "traceparent"


def envoy_traceparent(headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> str | None:
    """The W3C ``traceparent`` that carries Envoy's sampling decision: the ext_proc call's gRPC
    metadata (Envoy's own span, present when Envoy traces) first, else the forwarded HTTP header
    (the first one when a client sent two: that is the one Envoy reads)."""
    for key, value in metadata or ():
        if key == TRACEPARENT and isinstance(value, str):
            return value
    return headers.get(TRACEPARENT)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id of a well-formed W3C version-00-style traceparent, else None (pure string work)."""
    tp = traceparent
    if tp is None or len(tp) != 55 or tp[2] != "-" or tp[35] != "-" or tp[52] != "-" or tp.startswith("ff"):
        return None
    try:
        int(tp[:2], 16)
        int(tp[3:35], 16)
        int(tp[36:52], 16)
        int(tp[53:], 16)
    except ValueError:
        return None
    trace_id = tp[3:35]
    return None if trace_id == "0" * 32 or tp[36:52] == "0" * 16 else trace_id


@dataclass(slots=True)
class ExchangeRecord:
    method: str = ""
    path: str = ""
    endpoint: str = ""
    pool: str = ""
    reason: str = ""
    detail: str = ""  # finer cause for unparseable/no_body decisions
    category: str = ""
    model: str | None = None
    text_bytes: int = 0
    body_bytes: int = 0
    estimated_prompt_tokens: int = 0
    estimated_total_tokens: int = 0
    ratio: float = 0.0
    output_reserve: int = 0
    output_defaulted: bool = False
    stream: bool = False
    include_usage_injected: bool = False
    spilled: bool = False
    short_pressure: float = 0.0  # the pressures the decision used (1.0 = at capacity)
    long_pressure: float = 0.0
    pressure_source: str = ""  # live (engines' /metrics) | local (this router's in-flight count)
    status: int = 0
    learn: bool = False
    usage_source: str = ""  # json | sse | overflow_400
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    observation: str = ""  # accepted | rejected reason
    estimate_error_pct: float | None = None
    response_model: str | None = None
    request_body: bytes | None = None  # only when telemetry.capture_content is on
    phase_seconds: dict[str, float] = field(default_factory=dict)


class ExchangeObserver:
    """No-op base; telemetry subclasses it. Hooks must be cheap and must not raise."""

    def started(self, record: ExchangeRecord, headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> None:
        """Request headers arrived. ``metadata`` is the ext_proc gRPC call's metadata."""

    def upstream_headers(self, record: ExchangeRecord) -> Mapping[str, str]:
        """Headers to add to the upstream request (e.g. ``traceparent``), called at request headers."""
        return {}

    def decided(self, record: ExchangeRecord) -> None:
        """The pool was chosen."""

    def learned(self, record: ExchangeRecord) -> None:
        """Usage arrived and was offered to the calibrator (accepted or not)."""

    def failed(self, record: ExchangeRecord, phase: str) -> None:
        """A router bug while handling ``phase``'s message: the stream ends with a gRPC error."""

    def trace_id(self, record: ExchangeRecord) -> str:
        """The trace the exchange's telemetry joined ('' when not tracing), for error logs."""
        return ""

    def finished(self, record: ExchangeRecord) -> None:
        """The ext_proc stream ended (response done, client gone, or Envoy closed it)."""
