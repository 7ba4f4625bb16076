"""Pool pressure: how full each pool is, as the router sees it.

``PressureSource`` is the seam between the routing policy and whatever knows the pools' load. The
router reads ``pressure`` to decide spillover and reports every request it routes through exactly
one of two paths: ``acquire`` then ``release`` for a request whose end it will observe, or one
``lease`` for a request it will never hear of again. A source backed by scraped vLLM metrics
(``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``) implements the same four methods and
may use the request events to bridge the gaps between scrapes, or ignore them.

``InFlightPressure`` is the built-in source: the router sees every request start, and the end of
every request whose response it observes, so in-flight counts per pool against a configured capacity
are a free, lag-free signal. Requests whose response is not observed (response processing skipped to
save CPU once calibration converged) hold a lease for the pool's typical exchange duration, learned
from the observed ones.

That count is per router replica: with N replicas each sees about 1/N of the load, and none sees
traffic that reaches the pools another way. ``LivePressure`` adds what the engines themselves say
(vLLM's ``num_requests_running``/``num_requests_waiting``/``kv_cache_usage_perc``, scraped by
``extproc.server.pool_load``), and falls back to the local count when that word is stale. Both are
pure: the scraper hands in ``EngineLoad`` samples with their time; nothing here does I/O.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from extproc.algorithm.dispatch import LONG, SHORT

LIVE, LOCAL = "live", "local"  # where a pressure value came from (span attribute, metric label)
INITIAL_DURATION_S = 5.0  # lease length before any observed exchange taught a pool's typical duration


@dataclass(frozen=True, slots=True)
class CapacityParams:
    """In-flight requests each pool holds (instances x max_num_seqs): the denominator of pressure."""

    short_capacity: int = 256
    long_capacity: int = 64


class PressureSource(Protocol):
    """Everything ``BudgetRouter`` asks of the pools' load, and nothing more.

    Calls come from the routing thread only (the event loop of one router process); an
    implementation that also serves a scrape thread must make its reads safe itself.
    """

    def pressure(self, pool: str) -> float:
        """Load of ``pool`` relative to what it holds: 1.0 is full; spillover compares it with
        ``DispatchPolicy.spill_threshold`` and with the other pool's pressure."""
        ...

    def acquire(self, pool: str) -> None:
        """A request was routed to ``pool`` and its end will be reported through ``release``."""
        ...

    def release(self, pool: str, duration_s: float | None = None) -> None:
        """An acquired request ended after ``duration_s`` on the router's clock (None: unknown)."""
        ...

    def lease(self, pool: str) -> None:
        """A request was routed to ``pool`` and its end will never be reported."""
        ...


class InFlightPressure:
    """Pressure = (in-flight requests + unexpired leases) / capacity, per pool."""

    def __init__(
        self,
        capacity: Mapping[str, int],
        clock: Callable[[], float] = time.monotonic,
        initial_duration_s: float = INITIAL_DURATION_S,
    ) -> None:
        self.capacity = {k: max(1, v) for k, v in capacity.items()}
        self.in_flight = dict.fromkeys(capacity, 0)
        self.mean_duration = dict.fromkeys(capacity, initial_duration_s)
        self._initial_duration_s = initial_duration_s
        self._leases: dict[str, list[float]] = {k: [] for k in capacity}
        self._clock = clock

    @classmethod
    def for_pools(cls, params: CapacityParams, clock: Callable[[], float] = time.monotonic) -> InFlightPressure:
        return cls({SHORT: params.short_capacity, LONG: params.long_capacity}, clock)

    def acquire(self, pool: str) -> None:
        self.in_flight[pool] = self.in_flight.get(pool, 0) + 1

    def release(self, pool: str, duration_s: float | None = None) -> None:
        self.in_flight[pool] = max(0, self.in_flight.get(pool, 0) - 1)
        if duration_s is not None and duration_s >= 0:
            old = self.mean_duration.get(pool, duration_s)
            self.mean_duration[pool] = 0.9 * old + 0.1 * duration_s

    def lease(self, pool: str) -> None:
        """Count an unobserved request as in flight for the pool's typical duration."""
        expiry = self._clock() + self.mean_duration.get(pool, self._initial_duration_s)
        heapq.heappush(self._leases.setdefault(pool, []), expiry)

    def count(self, pool: str) -> int:
        leases = self._leases.get(pool)
        if leases:
            now = self._clock()
            while leases and leases[0] <= now:
                heapq.heappop(leases)
        return self.in_flight.get(pool, 0) + (len(leases) if leases else 0)

    def snapshot(self) -> dict[str, int]:
        """In-flight plus unexpired leases per pool, without touching the heaps (safe from a scrape thread)."""
        now = self._clock()
        return {
            pool: self.in_flight.get(pool, 0) + sum(1 for t in list(self._leases.get(pool, ())) if t > now)
            for pool in self.capacity
        }

    def pressure(self, pool: str) -> float:
        return self.count(pool) / self.capacity.get(pool, 1)


@dataclass(frozen=True, slots=True)
class EngineLoad:
    """One engine's (or a pool's summed) word on its load; ``kv_usage`` is a fraction, 0..1."""

    running: float = 0.0
    waiting: float = 0.0
    kv_usage: float = 0.0

    @property
    def requests(self) -> float:
        return self.running + self.waiting


def pool_load(engines: Mapping[str, EngineLoad]) -> EngineLoad:
    """Sum the queues; KV use is the fullest engine's (the one that preempts first)."""
    loads = list(engines.values())
    return EngineLoad(
        sum(e.running for e in loads), sum(e.waiting for e in loads), max((e.kv_usage for e in loads), default=0.0)
    )


def engine_pressure(load: EngineLoad, capacity: float, sent_since: float = 0.0) -> float:
    """Requests the pool holds (running + waiting, plus what this router sent since the sample)
    against its slots, or its KV-cache use, whichever is higher: a pool of long prompts runs out of
    cache before it runs out of slots, and a full cache means preemptions, which hurt like a queue."""
    return max((load.requests + sent_since) / max(capacity, 1e-9), load.kv_usage)


@dataclass(frozen=True, slots=True)
class Sample:
    """A pool's load as scraped: summed over the endpoints that answered, at ``at`` (clock time)."""

    load: EngineLoad
    at: float
    answered: int  # endpoints whose scrape was fresh
    endpoints: int  # endpoints the pool has
    sent_mark: int  # the router's send counter when the scrape began


class LivePressure(InFlightPressure):
    """Engine-reported pressure while a scrape is fresh, the local in-flight count otherwise.

    While fresh, the pool's requests are what its engines reported plus what *this* router sent
    since the scrape began (the engines could not have counted those yet), so a burst inside one
    scrape interval cannot overfill a pool that looked empty. When only some endpoints answered,
    the answered ones stand for the pool: their load is measured against their share of the
    capacity. Older than ``max_age_s``, or nothing answered: the local count, as without scraping.
    """

    def __init__(
        self,
        capacity: dict[str, int],
        max_age_s: float,
        clock: Callable[[], float] = time.monotonic,
        initial_duration_s: float = INITIAL_DURATION_S,
    ) -> None:
        super().__init__(capacity, clock, initial_duration_s)
        self.max_age_s = max_age_s
        self.samples: dict[str, Sample] = {}
        self.sent = dict.fromkeys(capacity, 0)
        self.source = dict.fromkeys(capacity, LOCAL)  # what the latest pressure() of each pool used
        self.fallbacks = dict.fromkeys(capacity, 0)  # pressure() answers taken from the local count

    def acquire(self, pool: str) -> None:
        super().acquire(pool)
        self.sent[pool] = self.sent.get(pool, 0) + 1

    def lease(self, pool: str) -> None:
        super().lease(pool)
        self.sent[pool] = self.sent.get(pool, 0) + 1

    def observe(self, pool: str, sample: Sample) -> None:
        self.samples[pool] = sample

    def age(self, pool: str) -> float:
        sample = self.samples.get(pool)
        return math.inf if sample is None else max(0.0, self._clock() - sample.at)

    def pressure(self, pool: str) -> float:
        sample = self.samples.get(pool)
        if sample is None or sample.answered <= 0 or self._clock() - sample.at > self.max_age_s:
            self.source[pool] = LOCAL
            self.fallbacks[pool] = self.fallbacks.get(pool, 0) + 1
            return super().pressure(pool)
        self.source[pool] = LIVE
        share = sample.answered / max(sample.endpoints, sample.answered)
        sent_since = max(0, self.sent.get(pool, 0) - sample.sent_mark) * share  # those that hit answered ones
        return engine_pressure(sample.load, self.capacity.get(pool, 1) * share, sent_since)
