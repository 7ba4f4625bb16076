"""Aggregate view of routing: what was decided, why, how good the estimate was, what it cost.

Hot-path cost matters more than anything here (the SDK spends ~7 µs cleaning and hashing the
attributes of every synchronous measurement). So counters are plain in-process tallies published
through observable counters at collection time (exact, and a dict increment per event), and only
histograms are aggregated in-process too (``histograms.py``) and merged into each collection. Attribute dicts are
interned per label combination: label values come from small fixed sets, so the caches stay tiny.
Gauges are read at collection time (scrape or export, on the exporter's thread). The routing ratio
gauge reports the ratio the latest decision in each category used, taken from the record: calling
``Calibrator.ratio`` from another thread could race its cache with a concurrent observation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from extproc.algorithm.calibration import Observation as Outcome
from extproc.algorithm.categories import CategoryParams
from extproc.algorithm.dispatch import (
    CAPACITY,
    LONG,
    NO_BODY,
    NO_OUTPUT_LIMIT,
    OVER_LONG_CONTEXT,
    SHORT,
    SPILLOVER,
    THRESHOLD,
    TOO_COMPLEX,
    UNPARSEABLE,
)
from extproc.algorithm.pressure import InFlightPressure
from extproc.algorithm.request_shape import ENDPOINTS
from extproc.server.events import Decided, ExchangeRecord, Observed
from extproc.server.exchange import TOO_COMPLEX_REASONS, UNPARSEABLE_DETAILS, USAGE_SOURCES
from extproc.telemetry import names as n
from extproc.telemetry.histograms import HistogramSet

if TYPE_CHECKING:
    from extproc.server.exchange import RouterRuntime
    from extproc.server.pool_load import PoolLoadScraper
    from extproc.server.state_store import StateStore

ACCEPTED = Outcome.ACCEPTED.value
# (pool, reason, endpoint) a decision can produce: the series a dashboard divides by, present from 0.
_PARSED = [(SHORT, THRESHOLD)] + [
    (LONG, r) for r in (THRESHOLD, CAPACITY, OVER_LONG_CONTEXT, SPILLOVER, NO_OUTPUT_LIMIT)
]
DECISIONS = [(pool, reason, e) for e in ENDPOINTS for pool, reason in _PARSED] + [
    (LONG, reason, n.OTHER_ENDPOINT) for reason in (UNPARSEABLE, NO_BODY, TOO_COMPLEX)
]
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


class _Tally:
    """A counter kept as a dict of label tuples; published by an observable counter when collected."""

    def __init__(
        self, meter: Meter, name: str, unit: str, description: str, *keys: str, known: Iterable[tuple[str, ...]] = ()
    ) -> None:
        # Label sets known up front start at 0: a rate() or an alert sees the series before the first event.
        self.counts: dict[tuple[str, ...], int] = {values: 0 for values in known}
        if not keys:
            self.counts[()] = 0
        self.attrs = _Interned(*keys)
        meter.create_observable_counter(name, [self._observe], unit, description)

    def add(self, *values: str) -> None:
        self.counts[values] = self.counts.get(values, 0) + 1

    def _observe(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, self.attrs(*k)) for k, v in dict(self.counts).items()]


def retry_outcome(status: int) -> str:
    if status >= 500 or status == 0:
        return "failed"
    return "rejected" if status >= 400 else "served"


class DecisionMetrics:
    def __init__(self, meter: Meter, histograms: HistogramSet) -> None:
        self.runtime: RouterRuntime | None = None
        self.store: StateStore | None = None
        self._last_ratio: dict[str, float] = {}
        self.requests = _Tally(
            meter,
            n.M_REQUESTS,
            "{request}",
            "Routing decisions by pool, reason and endpoint (chat, completions, responses; other = not parsed).",
            "pool",
            "reason",
            "endpoint",
            known=DECISIONS,
        )
        self.spillovers = _Tally(
            meter, n.M_SPILLOVERS, "{request}", "Requests that fit the short pool but went long under pressure."
        )
        self.unparseable = _Tally(
            meter,
            n.M_UNPARSEABLE,
            "{request}",
            "Requests routed long because the body could not be read.",
            "detail",
            known=[(d,) for d in UNPARSEABLE_DETAILS],
        )
        self.too_complex = _Tally(
            meter,
            n.M_TOO_COMPLEX,
            "{request}",
            "Requests routed long unread: reading them would cost more than one request's bound.",
            "detail",
            known=[(d,) for d in TOO_COMPLEX_REASONS],
        )
        self.no_max_tokens = _Tally(
            meter,
            n.M_NO_MAX_TOKENS,
            "{request}",
            "Requests that set no output limit (routed per routing.no_output_limit).",
            "endpoint",
            known=[(e,) for e in ENDPOINTS],
        )
        self.usage = _Tally(
            meter,
            n.M_USAGE,
            "{observation}",
            "Usage read from responses, by source (json, sse, overflow_400).",
            "source",
            known=[(s,) for s in USAGE_SOURCES],
        )
        self.rejected = _Tally(
            meter,
            n.M_REJECTED,
            "{observation}",
            "Usage observations the calibrator refused, by cause.",
            "cause",
            known=[(o.value,) for o in Outcome if o is not Outcome.ACCEPTED],
        )
        self.errors = _Tally(
            meter,
            n.M_ERRORS,
            "{stream}",
            "Router bugs: exceptions while handling a message; the stream ended with a gRPC error.",
            "phase",
            known=[(p,) for p in n.MESSAGE_PHASES],
        )
        self.retries = _Tally(
            meter,
            n.M_RETRIES,
            "{request}",
            "Short requests the net retried on the long pool, by the long pool's answer.",
            "category",
            "outcome",
        )
        self.truncations = _Tally(
            meter,
            n.M_TRUNCATIONS,
            "{request}",
            "Answers a pool cut at the end of its context although the request allowed more output "
            "(pool=short: caused by routing; long: the request fits no pool).",
            "pool",
            "category",
            known=[(SHORT, c) for c in CategoryParams().enabled],
        )
        self.estimate_error = histograms.histogram(
            n.M_ESTIMATE_ERROR,
            "%",
            "Estimated prompt tokens as % of the actual count (100 = exact; signed error = value - 100).",
            n.ERROR_PCT_BUCKETS,
            "category",
        )
        self.processing = histograms.histogram(
            n.M_PROCESSING,
            "s",
            "Router CPU time per phase of one exchange (request_headers, request_body, response).",
            n.PROCESSING_BUCKETS,
            "phase",
        )
        self.est_tokens = histograms.histogram(
            n.M_EST_TOKENS,
            "{token}",
            "Estimated total token budget (prompt + output reserve) per routed request.",
            n.TOKEN_BUCKETS,
            "pool",
            "category",
        )
        meter.create_observable_gauge(
            n.M_RATIO, [self._ratios], "1", "Bytes/token (c* = mean - gamma*sigma) the latest decision used."
        )
        meter.create_observable_gauge(n.M_MEAN, [self._means], "1", "Learned mean bytes per token.")
        meter.create_observable_gauge(n.M_DEVIATION, [self._deviations], "1", "Learned deviation of bytes/token.")
        meter.create_observable_gauge(n.M_SAMPLES, [self._samples], "{observation}", "Accepted observations.")
        meter.create_observable_gauge(n.M_IN_FLIGHT, [self._in_flight], "{request}", "Requests in flight by pool.")
        meter.create_observable_counter(
            n.M_EXACT_COUNTS, [self._exact_counts], "{request}", "Estimates counted exactly (estimator.exact_band)."
        )
        meter.create_observable_counter(
            n.M_ENGINE_COUNTS,
            [self._engine_counts],
            "{request}",
            "Prompt counts asked of the engines (estimator.engine_counts), by outcome: counted, or the fallback "
            "to the estimate (timeout, error, busy, unavailable).",
        )
        meter.create_observable_counter(
            n.M_STATE_SKIPPED,
            [self._state_counter("skipped_entries")],
            "{entry}",
            "Malformed calibration state entries skipped (each time the file was read).",
        )
        meter.create_observable_counter(
            n.M_STATE_SYNC_FAILURES,
            [self._state_counter("sync_failures")],
            "{sync}",
            "Calibration state syncs that failed (the next save interval retries).",
        )
        self._category = _Interned("category")
        self._pool = _Interned("pool")
        self._outcome = _Interned("outcome")
        self._pool_cause = _Interned("pool", "cause")
        self._last_pressure: dict[str, float] = {}
        meter.create_observable_gauge(
            n.M_PRESSURE, [self._pressures], "1", "Pool pressure the latest decision used (1 = at capacity)."
        )
        self._live_load_instruments(meter)

    def _live_load_instruments(self, meter: Meter) -> None:
        """Read at collection time from the scraper and the live pressure (absent: no series)."""
        gauges = (
            (n.M_POOL_RUNNING, "{request}", "Requests running on the pool's engines, as last scraped.", "running"),
            (n.M_POOL_WAITING, "{request}", "Requests queued on the pool's engines, as last scraped.", "waiting"),
            (n.M_POOL_KV, "1", "Fullest engine's KV-cache use in the pool (0..1), as last scraped.", "kv_usage"),
        )
        for name, unit, doc, attr in gauges:
            meter.create_observable_gauge(name, [self._scraped_callback(attr)], unit, doc)
        meter.create_observable_gauge(
            n.M_SCRAPE_AGE, [self._scrape_age], "s", "Age of the pool's freshest usable scrape (stale: local count)."
        )
        meter.create_observable_counter(n.M_SCRAPES, [self._scrapes], "{scrape}", "Scrapes of pool endpoints.")
        meter.create_observable_counter(
            n.M_SCRAPE_FAILURES, [self._scrape_failures], "{scrape}", "Failed scrapes by cause (timeout, unreadable)."
        )
        meter.create_observable_counter(
            n.M_LOCAL_FALLBACKS,
            [self._fallbacks],
            "{decision}",
            "Pressure reads that fell back to the local in-flight count (scrape stale or failed).",
        )

    def attach(self, runtime: RouterRuntime, store: StateStore | None = None) -> None:
        self.runtime = runtime
        if store is not None:
            self.store = store

    def _state_counter(self, attribute: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """Reads the store's tally at collection time; 0 from the start, so alerts see the series."""
        return lambda _options: [Observation(0 if self.store is None else getattr(self.store, attribute))]

    # -- hooks -----------------------------------------------------------------------------------
    def decided(self, record: Decided) -> None:
        self.requests.add(record.pool, record.reason, record.endpoint or n.OTHER_ENDPOINT)
        if record.pressure_source:
            self._last_pressure["short"] = record.short_pressure
            self._last_pressure["long"] = record.long_pressure
        if record.spilled:
            self.spillovers.add()
        if record.reason == UNPARSEABLE:
            self.unparseable.add(record.detail)
        elif record.reason == TOO_COMPLEX:
            self.too_complex.add(record.detail)
        elif record.endpoint:
            if record.output_defaulted:
                self.no_max_tokens.add(record.endpoint)
            self.est_tokens.record(record.estimated_total_tokens, record.pool, record.category)
            self._last_ratio[record.category] = record.ratio

    def observed(self, record: Observed) -> None:
        self.usage.add(record.usage_source)
        if record.observation != ACCEPTED:
            self.rejected.add(record.observation)
        if record.estimate_error_pct is not None:  # None: the observation says nothing about the estimate
            self.estimate_error.record(100.0 + record.estimate_error_pct, record.category)

    def finished(self, record: ExchangeRecord) -> None:
        if record.context_truncated:
            self.truncations.add(record.served_pool or record.pool, record.category)
        if record.attempts > 1:
            self.retries.add(record.category or UNPARSEABLE, retry_outcome(record.status))
        phases = record.phase_seconds
        for phase in n.REQUEST_PHASES:
            seconds = phases.get(phase)
            if seconds is not None:
                self.processing.record(seconds, phase)
        response = sum(v for k, v in phases.items() if k not in n.REQUEST_PHASES)
        if response:
            self.processing.record(response, n.RESPONSE_PHASE)

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

    def _exact_counts(self, _options: CallbackOptions) -> Iterable[Observation]:
        exact = None if self.runtime is None else self.runtime.router.exact
        return [] if exact is None else [Observation(exact.fired)]

    def _engine_counts(self, _options: CallbackOptions) -> Iterable[Observation]:
        counter = None if self.runtime is None else self.runtime.counter
        outcomes = {} if counter is None else dict(counter.outcomes)
        return [Observation(v, self._outcome(k)) for k, v in outcomes.items()]

    def _in_flight(self, _options: CallbackOptions) -> Iterable[Observation]:
        if self.runtime is None:
            return []
        pressure = self.runtime.router.pressure
        if not isinstance(pressure, InFlightPressure):  # a scraped source reports its own load
            return []
        return [Observation(v, self._pool(p)) for p, v in dict(pressure.in_flight).items()]

    def _pressures(self, _options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(v, self._pool(p)) for p, v in dict(self._last_pressure).items()]

    @property
    def _scraper(self) -> PoolLoadScraper | None:
        return None if self.runtime is None else self.runtime.scraper

    def _scraped_callback(self, attr: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        return lambda _options: self._scraped(attr)

    def _scraped(self, attr: str) -> Iterable[Observation]:
        sc = self._scraper
        loads = {} if sc is None else dict(sc.stats.load)
        return [Observation(getattr(v, attr), self._pool(p)) for p, v in loads.items()]

    def _scrape_age(self, _options: CallbackOptions) -> Iterable[Observation]:
        live = None if self._scraper is None else self._scraper.pressure
        return [] if live is None else [Observation(live.age(p), self._pool(p)) for p in dict(live.samples)]

    def _scrapes(self, _options: CallbackOptions) -> Iterable[Observation]:
        sc = self._scraper
        return [] if sc is None else [Observation(v, self._pool(p)) for p, v in dict(sc.stats.scrapes).items()]

    def _scrape_failures(self, _options: CallbackOptions) -> Iterable[Observation]:
        sc = self._scraper
        return [] if sc is None else [Observation(v, self._pool_cause(*k)) for k, v in dict(sc.stats.failures).items()]

    def _fallbacks(self, _options: CallbackOptions) -> Iterable[Observation]:
        sc = self._scraper
        return [] if sc is None else [Observation(v, self._pool(p)) for p, v in dict(sc.pressure.fallbacks).items()]
