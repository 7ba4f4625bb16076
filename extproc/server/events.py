"""What the exchange tells the outside world: immutable events of each HTTP exchange, and hooks.

The exchange keeps its control state to itself. Observers get frozen events built from the
router's own frozen values (``Ticket``, ``Outcome``, ``Learned``), so building them costs a few
small objects per exchange and an observer can keep one but never steer routing through it:
``Decided`` when the pool is chosen, ``Observed`` when usage came back, and an ``ExchangeRecord``
(the whole exchange, flat) when the stream starts and ends. Traces, metrics and logs are
implemented elsewhere (``extproc.telemetry``) so routing never depends on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from extproc.algorithm.router import Learned, Outcome, Ticket

_NO_PHASES: Mapping[str, float] = MappingProxyType({})

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


def _of(path: str, default: Any) -> property:
    """A read-only attribute read through frozen values (``"ticket.estimate.total"``); ``default``
    where a step is None (an exchange that was never decided, a request that could not be read)."""
    steps = path.split(".")

    def get(self: object) -> Any:
        value: Any = self
        for step in steps:
            value = getattr(value, step)
            if value is None:
                return default
        return value

    get.__name__ = steps[-1]
    return property(get)


@dataclass(frozen=True, slots=True)
class Decided:
    """The routing decision of one exchange, with what the exchange knew of the request."""

    key: int  # the same in every event of one exchange: lets an observer join them
    method: str
    path: str
    endpoint: str  # chat | completions; "" when the request could not be read
    detail: str  # finer cause for unparseable/no_body decisions
    body_bytes: int
    include_usage_injected: bool
    request_body: bytes | None  # only when telemetry.capture_content is on
    pressure_source: str  # live (engines' /metrics) | local (this router's count); "" when not read
    ticket: Ticket
    engine_count: str = ""  # asked the engine for the prompt count: counted, or why not (timeout, ...)
    engine_count_s: float = 0.0  # how long the request waited for it

    pool = _of("ticket.decision.pool", "")
    reason = _of("ticket.decision.reason", "")
    spilled = _of("ticket.decision.spilled", False)
    short_pressure = _of("ticket.short_pressure", 0.0)  # the pressures the decision used (1.0 = at capacity)
    long_pressure = _of("ticket.long_pressure", 0.0)
    observed = _of("ticket.observe", False)  # the router asked for this response's usage
    must_read = _of("ticket.must_read", False)  # ... because it is a short-pool answer near the boundary
    category = _of("ticket.shape.category", "")
    model = _of("ticket.shape.model", None)
    text_bytes = _of("ticket.shape.text_bytes", 0)
    stream = _of("ticket.shape.stream", False)
    estimated_prompt_tokens = _of("ticket.estimate.prompt_tokens", 0)
    estimated_total_tokens = _of("ticket.estimate.total", 0)
    ratio = _of("ticket.estimate.ratio", 0.0)
    output_reserve = _of("ticket.estimate.output_tokens", 0)
    output_defaulted = _of("ticket.estimate.output_defaulted", False)


@dataclass(frozen=True, slots=True)
class Observed:
    """Usage came back for a decided exchange and was offered to the calibrator."""

    decision: Decided
    usage_source: str  # json | sse | overflow_400 | overflow_400_bound (a lower bound only)
    outcome: Outcome
    learned: Learned | None  # None: the router had nothing to learn from it
    # The pool cut the answer at the end of its context (``BudgetRouter.truncated``): on the short
    # pool a truncation caused by routing.
    context_truncated: bool = False

    key = _of("decision.key", 0)
    category = _of("decision.category", "")
    prompt_tokens = _of("outcome.prompt_tokens", None)
    completion_tokens = _of("outcome.completion_tokens", None)
    observation = _of("learned.observation.value", "")  # accepted, or why the calibrator rejected it
    estimate_error_pct = _of("learned.error_pct", None)


@dataclass(frozen=True, slots=True)
class ExchangeRecord:
    """One exchange as far as it got: at ``started`` only the request line, at ``finished`` all of
    it. Every field of ``Decided`` and ``Observed`` reads flat (``record.pool``, ``record.usage_source``)."""

    key: int = 0
    method: str = ""
    path: str = ""
    decision: Decided | None = None
    outcome: Observed | None = None
    status: int = 0
    # 2: the short pool failed the request (400, refused, reset) and Envoy's net resent it to the long pool
    attempts: int = 1
    served_pool: str = ""  # the pool whose answer the client got (read at response headers)
    response_model: str | None = None
    phase_seconds: Mapping[str, float] = field(default_factory=lambda: _NO_PHASES)

    endpoint = _of("decision.endpoint", "")
    pool = _of("decision.pool", "")
    reason = _of("decision.reason", "")
    detail = _of("decision.detail", "")
    category = _of("decision.category", "")
    model = _of("decision.model", None)
    text_bytes = _of("decision.text_bytes", 0)
    body_bytes = _of("decision.body_bytes", 0)
    estimated_prompt_tokens = _of("decision.estimated_prompt_tokens", 0)
    estimated_total_tokens = _of("decision.estimated_total_tokens", 0)
    ratio = _of("decision.ratio", 0.0)
    output_reserve = _of("decision.output_reserve", 0)
    output_defaulted = _of("decision.output_defaulted", False)
    stream = _of("decision.stream", False)
    include_usage_injected = _of("decision.include_usage_injected", False)
    spilled = _of("decision.spilled", False)
    short_pressure = _of("decision.short_pressure", 0.0)
    long_pressure = _of("decision.long_pressure", 0.0)
    pressure_source = _of("decision.pressure_source", "")
    observed = _of("decision.observed", False)
    request_body = _of("decision.request_body", None)
    usage_source = _of("outcome.usage_source", "")
    prompt_tokens = _of("outcome.prompt_tokens", None)
    completion_tokens = _of("outcome.completion_tokens", None)
    observation = _of("outcome.observation", "")
    estimate_error_pct = _of("outcome.estimate_error_pct", None)
    context_truncated = _of("outcome.context_truncated", False)
    must_read = _of("decision.must_read", False)
    engine_count = _of("decision.engine_count", "")
    engine_count_s = _of("decision.engine_count_s", 0.0)


class ExchangeObserver:
    """No-op base; telemetry subclasses it. Hooks must be cheap and must not raise."""

    def started(self, record: ExchangeRecord, headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]) -> None:
        """Request headers arrived. ``metadata`` is the ext_proc gRPC call's metadata."""

    def upstream_headers(self, record: ExchangeRecord) -> Mapping[str, str]:
        """Headers to add to the upstream request (e.g. ``traceparent``), called at request headers."""
        return {}

    def decided(self, event: Decided) -> None:
        """The pool was chosen."""

    def follows_response(self, event: Decided) -> bool:
        """Whether this observer needs the response's status and attempts even where the router does
        not (a traced exchange's span, a decision log line): else the exchange may end at the decision."""
        return False

    def observed(self, event: Observed) -> None:
        """Usage arrived and was offered to the calibrator (accepted or not)."""

    def failed(self, record: ExchangeRecord, phase: str) -> None:
        """A router bug while handling ``phase``'s message: the stream ends with a gRPC error."""

    def trace_id(self, record: ExchangeRecord) -> str:
        """The trace the exchange's telemetry joined ('' when not tracing), for error logs."""
        return ""

    def finished(self, record: ExchangeRecord) -> None:
        """The ext_proc stream ended (response done, client gone, or Envoy closed it)."""
