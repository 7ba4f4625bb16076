"""Aggregate view of routing: what was decided, why, how good the estimate was, what it cost.

Attribute dicts are interned per label combination: label values come from small fixed sets
(pools, reasons, categories, sources), so the cache stays tiny and the hot path allocates no dict.
Gauges are read at collection time (scrape or export, on the exporter's thread). The routing ratio
gauge reports the ratio the latest decision in each category used, taken from the record: calling
``Calibrator.ratio`` from another thread could race its cache with a concurrent observation.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from extproc.observer import ExchangeRecord
from extproc.telemetry import names as n

if TYPE_CHECKING:
    from extproc.exchange import RouterRuntime

ACCEPTED = "accepted"
UNPARSEABLE = "unparseable"
# Observations whose error says nothing about the estimate: zero tokens, or a bytes/token ratio no
# tokenizer produces (a broken or lying backend). Outliers stay: they are plausible and real.
NOT_AN_ERROR = frozenset({"invalid", "out_of_bounds"})
Attrs = dict[str, str]


class _Interned:
    """One shared, never-mutated attribute dict per label-value tuple."""

    def __init__(self, *keys: str) -> None:
        self.keys = keys
        self._cache: dict[tuple[str, ...], Attrs] = {}

    def __call__(self, *values: str) -> Attrs:
        attrs = self._cache.get(values)
        if attrs is None:
            attrs = self._cache[values] = dict(zip(self.keys, values, strict=True))
        return attrs


class DecisionMetrics:
    def __init__(self, meter: Meter) -> None:
        self.runtime: RouterRuntime | None = None
        self._last_ratio: dict[str, float] = {}
        self.requests = meter.create_counter(n.M_REQUESTS, "{request}", "Routing decisions by pool and reason.")
        self.spillovers = meter.create_counter(
            n.M_SPILLOVERS, "{request}", "Requests that fit the short pool but went long under pressure."
        )
        self.unparseable = meter.create_counter(
            n.M_UNPARSEABLE, "{request}", "Requests routed long because the body could not be read, by cause."
        )
        self.no_max_tokens = meter.create_counter(
            n.M_NO_MAX_TOKENS, "{request}", "Requests without max_tokens/max_completion_tokens (default reserve)."
        )
        self.usage = meter.create_counter(
            n.M_USAGE, "{observation}", "Usage figures read from responses, by source (json, sse, overflow_400)."
        )
        self.rejected = meter.create_counter(
            n.M_REJECTED, "{observation}", "Usage observations the calibrator refused, by cause."
        )
        self.estimate_error = meter.create_histogram(
            n.M_ESTIMATE_ERROR,
            "%",
            "Estimated prompt tokens as % of the actual count (100 = exact; signed error = value - 100).",
            explicit_bucket_boundaries_advisory=n.ERROR_PCT_BUCKETS,
        )
        self.processing = meter.create_histogram(
            n.M_PROCESSING,
            "s",
            "Router CPU time per ext_proc phase of one exchange.",
            explicit_bucket_boundaries_advisory=n.PROCESSING_BUCKETS,
        )
        self.est_tokens = meter.create_histogram(
            n.M_EST_TOKENS,
            "{token}",
            "Estimated total token budget (prompt + output reserve) per routed request.",
            explicit_bucket_boundaries_advisory=n.TOKEN_BUCKETS,
        )
        meter.create_observable_gauge(
            n.M_RATIO, [self._ratios], "1", "Bytes/token (c* = mean - gamma*sigma) the latest decision used."
        )
        meter.create_observable_gauge(n.M_MEAN, [self._means], "1", "Learned mean bytes per token.")
        meter.create_observable_gauge(n.M_DEVIATION, [self._deviations], "1", "Learned deviation of bytes/token.")
        meter.create_observable_gauge(n.M_SAMPLES, [self._samples], "{observation}", "Accepted observations.")
        meter.create_observable_gauge(n.M_IN_FLIGHT, [self._in_flight], "{request}", "Requests in flight by pool.")
        self._pool_reason = _Interned("pool", "reason")
        self._detail = _Interned("detail")
        self._endpoint = _Interned("endpoint")
        self._source = _Interned("source")
        self._cause = _Interned("cause")
        self._category = _Interned("category")
        self._pool_category = _Interned("pool", "category")
        self._phase = _Interned("phase")
        self._pool = _Interned("pool")

    def attach(self, runtime: RouterRuntime) -> None:
        self.runtime = runtime

    # -- hooks -----------------------------------------------------------------------------------
    def decided(self, record: ExchangeRecord) -> None:
        self.requests.add(1, self._pool_reason(record.pool, record.reason))
        if record.spilled:
            self.spillovers.add(1)
        if record.reason == UNPARSEABLE:
            self.unparseable.add(1, self._detail(record.detail))
        elif record.endpoint:
            if record.output_defaulted:
                self.no_max_tokens.add(1, self._endpoint(record.endpoint))
            self.est_tokens.record(record.estimated_total_tokens, self._pool_category(record.pool, record.category))
            self._last_ratio[record.category] = record.ratio

    def learned(self, record: ExchangeRecord) -> None:
        self.usage.add(1, self._source(record.usage_source))
        if record.observation != ACCEPTED:
            self.rejected.add(1, self._cause(record.observation))
        if record.estimate_error_pct is not None and record.observation not in NOT_AN_ERROR:
            self.estimate_error.record(100.0 + record.estimate_error_pct, self._category(record.category))

    def finished(self, record: ExchangeRecord) -> None:
        for phase, seconds in record.phase_seconds.items():
            self.processing.record(seconds, self._phase(phase))

    # -- gauges (collection time) ----------------------------------------------------------------
    def _categories(self) -> dict[str, Any]:
        return {} if self.runtime is None else self.runtime.router.calibrator.categories()

    def _ratios(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r, self._category(c)) for c, r in dict(self._last_ratio).items()]

    def _means(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.mean, self._category(c)) for c, s in self._categories().items()]

    def _deviations(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.dev, self._category(c)) for c, s in self._categories().items()]

    def _samples(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.samples, self._category(c)) for c, s in self._categories().items()]

    def _in_flight(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.runtime is None:
            return []
        return [Observation(v, self._pool(p)) for p, v in dict(self.runtime.pressure.in_flight).items()]
