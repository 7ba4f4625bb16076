"""Pool pressure: how full each pool is, as the router sees it.

The router sees every request start, and the end of every request whose response it follows, so
in-flight counts per pool against a configured capacity are a free, lag-free pressure signal.
Requests whose response the router does not follow (response processing skipped to save CPU once
calibration converged) hold a *lease* for the pool's typical exchange duration, learned from the
followed ones. ``PressureSource`` is the seam for adding a scraped signal
(``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``) later: anything with
``pressure(pool) -> float`` can feed dispatch.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Protocol


class PressureSource(Protocol):
    def snapshot(self) -> dict[str, int]:
        """In-flight plus unexpired leases per pool, without touching the heaps (safe from a scrape thread)."""
        now = self._clock()
        return {
            pool: self.in_flight.get(pool, 0) + sum(1 for t in list(self._leases.get(pool, ())) if t > now)
            for pool in self.capacity
        }

    def pressure(self, pool: str) -> float: ...


class InFlightPressure:
    def __init__(
        self, capacity: dict[str, int], clock: Callable[[], float] = time.monotonic, initial_duration_s: float = 5.0
    ) -> None:
        self.capacity = {k: max(1, v) for k, v in capacity.items()}
        self.in_flight = dict.fromkeys(capacity, 0)
        self.mean_duration = dict.fromkeys(capacity, initial_duration_s)
        self._leases: dict[str, list[float]] = {k: [] for k in capacity}
        self._clock = clock

    def acquire(self, pool: str) -> None:
        self.in_flight[pool] = self.in_flight.get(pool, 0) + 1

    def release(self, pool: str, duration_s: float | None = None) -> None:
        self.in_flight[pool] = max(0, self.in_flight.get(pool, 0) - 1)
        if duration_s is not None and duration_s >= 0:
            old = self.mean_duration.get(pool, duration_s)
            self.mean_duration[pool] = 0.9 * old + 0.1 * duration_s

    def lease(self, pool: str) -> None:
        """Count an untracked request as in flight for the pool's typical duration."""
        heapq.heappush(self._leases.setdefault(pool, []), self._clock() + self.mean_duration.get(pool, 5.0))

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
