"""Service levels of a simulated run (after trimming the warm-up), and the SLOs a fleet is sized to.

Three latencies, as vLLM's metrics define them: TTFT (arrival to first token), TPOT (a request's mean
time per output token after the first: ``(finish − first token) / (output − 1)``) and ITL (the gap
between consecutive tokens, one sample per token — vLLM's inter-token-latency histogram). TPOT is a
per-request mean, so one prefill stall dominates a short answer's TPOT; ITL weighs every token alike.
An SLO names the ones it bounds; every figure is reported either way.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from extproc.planner.fleet import OVER_CONTEXT, QUEUE_FULL, SimResult
from extproc.planner.latency_hist import LatencyHistogram

# The limits that can size a fleet (its "binding" limit): the utilisation cap when the smallest fleet
# under it already meets the SLOs, else the SLO it missed one step smaller.
UTILISATION, TTFT, TPOT, ITL, REJECTIONS = "utilisation", "TTFT", "TPOT", "ITL", "rejections"
CDF_QUANTILES = (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.5, 99.9)


@dataclass(frozen=True)
class Slo:
    """The one place the planner's SLO defaults live: P99 TTFT 2 s and P99 TPOT 80 ms (the paper's),
    P99 ITL reported but not bounded, offered load at most 90 % of capacity."""

    ttft_p99_s: float = 2.0
    tpot_p99_s: float | None = 0.08
    itl_p99_s: float | None = None
    util_cap: float = 0.9

    def __post_init__(self) -> None:
        for name in ("ttft_p99_s", "tpot_p99_s", "itl_p99_s"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"SLO {name} must be > 0 seconds")
        if not 0 < self.util_cap <= 1:
            raise ValueError(f"utilisation cap must be in (0, 1], got {self.util_cap}")

    def describe(self) -> str:
        parts = [f"P99 TTFT <= {self.ttft_p99_s:g} s"]
        if self.tpot_p99_s is not None:
            parts.append(f"P99 TPOT (per-request mean) <= {1000 * self.tpot_p99_s:g} ms")
        if self.itl_p99_s is not None:
            parts.append(f"P99 ITL (per token) <= {1000 * self.itl_p99_s:g} ms")
        parts.append(f"offered load <= {self.util_cap:g} of capacity")
        return ", ".join(parts)

    def decode_metrics(self) -> tuple[str, ...]:
        """Which decode latencies this SLO bounds."""
        return tuple(m for m, v in ((TPOT, self.tpot_p99_s), (ITL, self.itl_p99_s)) if v is not None)


@dataclass(frozen=True)
class PoolMetrics:
    pool: str
    instances: int
    gpus: int
    requests: int
    completed: int
    rejected_over_context: int
    rejected_queue_full: int
    ttft_p50_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    preemptions: int
    preemptions_per_1k: float
    slot_utilisation: float  # mean decoding sequences per instance / max_num_seqs

    def failures(self, slo: Slo) -> tuple[str, ...]:
        """The limits this pool misses: a P99 over the SLO, or REJECTIONS when full queues (counted
        as infinite TTFTs) or nothing completed are what push it over."""
        if self.requests == 0:
            return ()
        if self.completed == 0:
            return (REJECTIONS,)
        out = []
        if not self.ttft_p99_s <= slo.ttft_p99_s:
            out.append(REJECTIONS if math.isinf(self.ttft_p99_s) and self.rejected_queue_full else TTFT)
        if slo.tpot_p99_s is not None and not self.tpot_p99_s <= slo.tpot_p99_s and math.isfinite(self.tpot_p99_s):
            out.append(TPOT)
        if slo.itl_p99_s is not None and not self.itl_p99_s <= slo.itl_p99_s and math.isfinite(self.itl_p99_s):
            out.append(ITL)
        return tuple(out)

    def meets(self, slo: Slo) -> bool:
        return not self.failures(slo)

    @property
    def rejected(self) -> int:
        return self.rejected_over_context + self.rejected_queue_full

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _pct(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def _latencies(res: SimResult, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TTFT (a full-queue rejection counts as infinite: it missed any SLO) and per-request TPOT."""
    wl = res.workload
    done = mask & (res.rejected == 0)
    full = int((mask & (res.rejected == QUEUE_FULL)).sum())
    ttft = np.concatenate([(res.first_token - wl.arrival)[done], np.full(full, np.inf)])
    tpot = ((res.finish - res.first_token) / np.maximum(wl.output - 1, 1))[done & (wl.output > 1)]
    return ttft, tpot


def measured_mask(res: SimResult, warmup: float | None = None) -> np.ndarray:
    """The requests every figure counts, rejections included: those after the warm-up."""
    n = len(res.workload)
    return np.arange(n) >= int((res.warmup if warmup is None else warmup) * n)


def summarise(res: SimResult, warmup: float | None = None) -> list[PoolMetrics]:
    """Per-pool figures over requests arriving after the first ``warmup`` share of the run (default:
    the run's own measurement window, which also bounds the per-token latencies).

    A request too long for its pool's context is counted but is not a latency: no fleet size fixes
    it. Slot utilisation is Little's law over the measured requests: their total time in a batch
    slot divided by the slot-seconds of their arrival window, so the drain after the last arrival
    does not dilute it.
    """
    wl = res.workload
    keep = measured_mask(res, warmup)
    start = wl.arrival[keep][0] if keep.any() else 0.0
    window = max(float(wl.arrival[-1] - start), 1e-9) if len(wl) else 1e-9
    out = []
    for p, stats in enumerate(res.pools):
        mine = keep & (res.pool == p)
        done = mine & (res.rejected == 0)
        ttft, tpot = _latencies(res, mine)
        n = int(mine.sum())
        occupied = float(np.sum(res.finish[done] - res.first_token[done]))
        preempted = int(res.preemptions[mine].sum())
        out.append(
            PoolMetrics(
                pool=stats.name,
                instances=stats.instances,
                gpus=stats.instances * stats.profile.gpus,
                requests=n,
                completed=int(done.sum()),
                rejected_over_context=int((mine & (res.rejected == OVER_CONTEXT)).sum()),
                rejected_queue_full=int((mine & (res.rejected == QUEUE_FULL)).sum()),
                ttft_p50_s=_pct(ttft, 50),
                ttft_p99_s=_pct(ttft, 99),
                tpot_p50_s=_pct(tpot, 50),
                tpot_p99_s=_pct(tpot, 99),
                itl_p50_s=stats.itl.quantile(50),
                itl_p99_s=stats.itl.quantile(99),
                preemptions=preempted,
                preemptions_per_1k=1000.0 * preempted / n if n else 0.0,
                slot_utilisation=occupied / (window * stats.instances * stats.profile.max_num_seqs),
            )
        )
    return out


def fleet_itl(res: SimResult) -> LatencyHistogram:
    merged = LatencyHistogram()
    for stats in res.pools:
        merged.merge(stats.itl)
    return merged


def fleet_percentiles(res: SimResult, warmup: float | None = None) -> dict[str, float]:
    """Fleet-wide figures (all pools together), as the paper reports them."""
    keep = measured_mask(res, warmup)
    ttft, tpot = _latencies(res, keep)
    itl = fleet_itl(res)
    n = int(keep.sum())
    wl = res.workload
    done = keep & (res.rejected == 0)
    preempted = int(res.preemptions[keep].sum())
    return {
        "requests": n,
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50),
        "tpot_p99_s": _pct(tpot, 99),
        "itl_p50_s": itl.quantile(50),
        "itl_p99_s": itl.quantile(99),
        "preemptions": preempted,
        "preemptions_per_1k": 1000.0 * preempted / n if n else 0.0,
        "preempted_requests": int((res.preemptions[keep] > 0).sum()),
        "rejected": int((keep & (res.rejected != 0)).sum()),
        "tokens_served": int((wl.prompt[done] + wl.output[done]).sum()),
        "output_tokens_served": int(wl.output[done].sum()),
    }


def fleet_meets(fleet: dict[str, float], slo: Slo) -> bool:
    """The fleet-wide P99s against the same SLO every pool is held to."""
    ok = fleet["ttft_p99_s"] <= slo.ttft_p99_s
    if slo.tpot_p99_s is not None and math.isfinite(fleet["tpot_p99_s"]):
        ok = ok and fleet["tpot_p99_s"] <= slo.tpot_p99_s
    if slo.itl_p99_s is not None and math.isfinite(fleet["itl_p99_s"]):
        ok = ok and fleet["itl_p99_s"] <= slo.itl_p99_s
    return bool(ok)


def latency_cdf(res: SimResult, warmup: float | None = None) -> dict[str, list[float]]:
    """Fleet-wide TTFT, TPOT and ITL at ``CDF_QUANTILES``: the curves the plan plots per side."""
    keep = measured_mask(res, warmup)
    ttft, tpot = _latencies(res, keep)
    itl = fleet_itl(res)
    return {
        "quantiles": list(CDF_QUANTILES),
        "ttft_s": [_pct(ttft, q) for q in CDF_QUANTILES],
        "tpot_s": [_pct(tpot, q) for q in CDF_QUANTILES],
        "itl_s": [itl.quantile(q) for q in CDF_QUANTILES],
    }
