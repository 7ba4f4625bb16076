"""Arrival processes over a trace's requests: Poisson re-timing at a chosen rate (the paper's setting),
replay on the trace's own clock (optionally sped up), and bounding by count or duration.

Re-timing keeps the request sizes and their order and only replaces the clock, so a 58-minute Azure
trace can drive 1,000 req/s or a 20 req/s laptop demo with the same size distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from extproc.workload.trace import Trace, TraceRequest


def _with_arrivals(requests: Sequence[TraceRequest], arrivals: Sequence[float]) -> list[TraceRequest]:
    return [
        TraceRequest(a, r.prompt_tokens, r.output_tokens, r.category) for r, a in zip(requests, arrivals, strict=True)
    ]


def cycle(requests: Sequence[TraceRequest], count: int, rng: np.random.Generator | None = None) -> list[TraceRequest]:
    """``count`` requests from repeated passes over ``requests`` (each later pass shuffled when ``rng``
    is given), for workloads longer than the trace, e.g. 100,000 Poisson arrivals from 8,819 rows."""
    if not requests:
        raise ValueError("cannot cycle an empty trace")
    out = list(requests[:count])
    while len(out) < count:
        order = rng.permutation(len(requests)) if rng is not None else np.arange(len(requests))
        out.extend(requests[i] for i in order[: count - len(out)])
    return out


def poisson(requests: Sequence[TraceRequest], rate: float, rng: np.random.Generator) -> list[TraceRequest]:
    """Arrival times of a Poisson process at ``rate`` req/s starting at 0 (first arrival after one gap)."""
    if not rate > 0 or not np.isfinite(rate):
        raise ValueError(f"rate must be a positive number of requests per second, got {rate}")
    gaps = rng.exponential(1.0 / rate, size=len(requests))
    return _with_arrivals(requests, np.cumsum(gaps).tolist())


def replay(trace: Trace, speedup: float = 1.0) -> list[TraceRequest]:
    """The trace's own arrival times divided by ``speedup`` (2.0 = twice as fast)."""
    if not trace.timed:
        raise ValueError(f"trace {trace.name!r} has no timestamps; re-time it with a Poisson rate instead")
    if not speedup > 0 or not np.isfinite(speedup):
        raise ValueError(f"speedup must be a positive number, got {speedup}")
    if speedup == 1.0:
        return list(trace.requests)
    return _with_arrivals(trace.requests, [r.arrival_s / speedup for r in trace.requests])


def bound(
    requests: Sequence[TraceRequest], count: int | None = None, duration_s: float | None = None
) -> list[TraceRequest]:
    """The first ``count`` requests and only those arriving before ``duration_s``."""
    if count is not None and count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration_s}")
    out = list(requests[:count] if count is not None else requests)
    if duration_s is not None:
        arrivals = np.fromiter((r.arrival_s for r in out), dtype=np.float64, count=len(out))
        out = out[: int(np.searchsorted(arrivals, duration_s, side="left"))]
    return out
