"""Pool pressure: how full each pool is, as the router sees it.

The router sees every request start and end, so in-flight counts per pool against a configured
capacity are a free, lag-free pressure signal. ``PressureSource`` is the seam for adding a scraped
signal (``vllm:num_requests_waiting``, ``vllm:kv_cache_usage_perc``) later: anything with
``pressure(pool) -> float`` can feed dispatch.
"""

from __future__ import annotations

from typing import Protocol


class PressureSource(Protocol):
    def pressure(self, pool: str) -> float: ...


class InFlightPressure:
    def __init__(self, capacity: dict[str, int]) -> None:
        self.capacity = {k: max(1, v) for k, v in capacity.items()}
        self.in_flight = dict.fromkeys(capacity, 0)

    def acquire(self, pool: str) -> None:
        self.in_flight[pool] = self.in_flight.get(pool, 0) + 1

    def release(self, pool: str) -> None:
        self.in_flight[pool] = max(0, self.in_flight.get(pool, 0) - 1)

    def pressure(self, pool: str) -> float:
        return self.in_flight.get(pool, 0) / self.capacity.get(pool, 1)
