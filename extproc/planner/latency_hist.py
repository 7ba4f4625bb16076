"""Per-token latency as a log-binned histogram: what vLLM's inter-token-latency histogram measures.

The simulator emits tokens in runs (a run of k identical decode steps is one event), so per-token gaps
are never materialised one by one: a run adds ``n`` tokens for each of its k step durations
``a + b·j`` by counting, per bin, how many of those durations fall in it. Bins grow by 1 % from
10 µs to 10⁴ s, so a percentile read from the histogram is within 1 % of the exact one.
"""

from __future__ import annotations

import math

import numpy as np

LO_S = 1e-5
RATIO = 1.01
_LOG_RATIO = math.log(RATIO)
BINS = math.ceil(math.log(1e4 / LO_S) / _LOG_RATIO) + 1


def _bin(x: float) -> int:
    if x <= LO_S:
        return 0
    return min(BINS - 1, int(math.log(x / LO_S) / _LOG_RATIO))


def _edge(i: int) -> float:
    return LO_S * RATIO**i


class LatencyHistogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0.0] * BINS
        self.total = 0.0

    def add(self, value_s: float, weight: float = 1.0) -> None:
        self.counts[_bin(value_s)] += weight
        self.total += weight

    def add_run(self, a: float, b: float, k: int, weight: float) -> None:
        """``weight`` tokens at each of the k durations a, a + b, …, a + b·(k − 1)."""
        if k <= 0 or weight <= 0:
            return
        counts = self.counts
        self.total += weight * k
        first = _bin(a)
        if b <= 0.0 or k == 1 or _bin(a + b * (k - 1)) == first:
            counts[first] += weight * k
            return
        done = 0
        i = first
        while done < k:
            # steps j < upper fall below this bin's upper edge
            upper = k if i >= BINS - 1 else min(k, max(done, math.ceil((_edge(i + 1) - a) / b)))
            counts[i] += weight * (upper - done)
            done = upper
            i += 1

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.total += other.total

    def quantile(self, q: float) -> float:
        """The q-th percentile (0-100), the geometric middle of its bin; NaN when empty."""
        if self.total <= 0:
            return math.nan
        target = self.total * q / 100.0
        acc = 0.0
        for i, c in enumerate(self.counts):
            acc += c
            if acc >= target and c > 0:
                return _edge(i) * math.sqrt(RATIO)
        return _edge(BINS - 1)

    def cdf(self) -> tuple[np.ndarray, np.ndarray]:
        """Upper bin edges and the cumulative share at each (non-empty bins only)."""
        counts = np.asarray(self.counts)
        nz = np.flatnonzero(counts)
        if not len(nz) or self.total <= 0:
            return np.array([]), np.array([])
        cum = np.cumsum(counts)[nz] / self.total
        return LO_S * RATIO ** (nz + 1.0), cum
