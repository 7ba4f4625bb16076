"""Per-pool service levels of a simulated run, after trimming the warm-up."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from extproc.planner.fleet import OVER_CONTEXT, QUEUE_FULL, SimResult

# The limits that can size a fleet (its "binding" limit): the utilisation cap when the smallest fleet
# under it already meets the SLOs, else the SLO it missed one step smaller.
UTILISATION, TTFT, TPOT, REJECTIONS = "utilisation", "TTFT", "TPOT", "rejections"


@dataclass(frozen=True)
class Slo:
    ttft_p99_s: float = 2.0
    tpot_p99_s: float = 0.08
    util_cap: float = 0.9

    def __post_init__(self) -> None:
        if not (self.ttft_p99_s > 0 and self.tpot_p99_s > 0):
            raise ValueError("SLO latencies must be > 0 seconds")
        if not 0 < self.util_cap <= 1:
            raise ValueError(f"utilisation cap must be in (0, 1], got {self.util_cap}")


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
        if not self.tpot_p99_s <= slo.tpot_p99_s:
            out.append(TPOT)
        return tuple(out)

    def meets(self, slo: Slo) -> bool:
        return not self.failures(slo)

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


def _measured(res: SimResult, warmup: float) -> np.ndarray:
    return np.arange(len(res.workload)) >= int(warmup * len(res.workload))


def summarise(res: SimResult, warmup: float = 0.1) -> list[PoolMetrics]:
    """Per-pool figures over requests arriving after the first ``warmup`` share of the run.

    A request too long for its pool's context is counted but is not a latency: no fleet size fixes
    it. Slot utilisation is Little's law over the measured requests: their total time in a batch
    slot divided by the slot-seconds of their arrival window, so the drain after the last arrival
    does not dilute it.
    """
    wl = res.workload
    keep = _measured(res, warmup)
    start = wl.arrival[keep][0] if keep.any() else 0.0
    window = max(float(wl.arrival[-1] - start), 1e-9)
    out = []
    for p, stats in enumerate(res.pools):
        mine = keep & (res.pool == p)
        done = mine & (res.rejected == 0)
        ttft, tpot = _latencies(res, mine)
        n = int(mine.sum())
        occupied = float(np.sum(res.finish[done] - res.first_token[done]))
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
                preemptions_per_1k=1000.0 * float(res.preemptions[mine].sum()) / n if n else 0.0,
                slot_utilisation=occupied / (window * stats.instances * stats.profile.max_num_seqs),
            )
        )
    return out


def measured_mask(res: SimResult, warmup: float = 0.1) -> np.ndarray:
    """The requests every figure counts, rejections included: those after the warm-up."""
    return _measured(res, warmup)


def fleet_percentiles(res: SimResult, warmup: float = 0.1) -> dict[str, float]:
    """Fleet-wide TTFT/TPOT percentiles (all pools together), as the paper reports them."""
    keep = _measured(res, warmup)
    ttft, tpot = _latencies(res, keep)
    n = int(keep.sum())
    return {
        "ttft_p50_s": _pct(ttft, 50),
        "ttft_p99_s": _pct(ttft, 99),
        "tpot_p50_s": _pct(tpot, 50),
        "tpot_p99_s": _pct(tpot, 99),
        "preemptions_per_1k": 1000.0 * float(res.preemptions[keep].sum()) / n if n else 0.0,
        "rejected": int((keep & (res.rejected != 0)).sum()),
    }
