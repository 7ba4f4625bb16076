"""What the exchange tells the outside world: one record per HTTP exchange, and hooks for telemetry.

The exchange logic only fills in an ``ExchangeRecord`` and calls these hooks; traces, metrics and
logs are implemented elsewhere (``extproc.telemetry``) so routing never depends on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


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
    attempts: int = 1  # 2: the short pool failed the request and Envoy's net resent it to the long pool
    served_pool: str = ""  # the pool whose answer the client got (response headers)
    learn: bool = False
    usage_source: str = ""  # json | sse | overflow_400 | overflow_400_bound
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

    def finished(self, record: ExchangeRecord) -> None:
        """The ext_proc stream ended (response done, client gone, or Envoy closed it)."""
