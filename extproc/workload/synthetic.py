"""The synthetic heavy-tail trace of the paper's evaluation: "80% < 2K total tokens, tail to 64K"
(and, in its other wording, 92% <= 8K). The 2023 Azure traces stop at 14K tokens, so this is the only
workload here that exercises the 64K long pool.

Distribution of total tokens (a two-piece mixture, every parameter in ``HeavyTailParams``):

* body, probability ``body_fraction`` = 0.80: lognormal with median 600 and sigma 0.9, truncated to
  [32, 2048] (rejection sampling), so F(2048) = 0.80 exactly in expectation;
* tail, probability 0.20: Pareto truncated to (2048, 65536] whose shape alpha is solved so that
  F(8192) = 0.92 overall (alpha ~ 0.48: a very heavy tail, ~1.8% of requests above 32K).

Totals are then split into prompt and output tokens by ``cdf.split_totals`` (same rule as CDF files).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from extproc.workload.cdf import DEFAULT_INPUT_FRACTION, trace_from_totals
from extproc.workload.trace import Trace


@dataclass(frozen=True)
class HeavyTailParams:
    body_fraction: float = 0.80
    body_median: float = 600.0
    body_sigma: float = 0.9
    body_min: int = 32
    knee: int = 2048
    mid: int = 8192
    fraction_at_mid: float = 0.92
    max_tokens: int = 65536

    def __post_init__(self) -> None:
        if not 0.0 < self.body_fraction < self.fraction_at_mid < 1.0:
            raise ValueError("need 0 < body_fraction < fraction_at_mid < 1")
        if not 0 < self.body_min < self.knee < self.mid < self.max_tokens:
            raise ValueError("need 0 < body_min < knee < mid < max_tokens")

    @property
    def tail_alpha(self) -> float:
        """Pareto shape with P(X <= mid | tail) = the share of the tail mass below ``mid``."""
        target = (self.fraction_at_mid - self.body_fraction) / (1.0 - self.body_fraction)
        r_mid, r_max = self.knee / self.mid, self.knee / self.max_tokens

        def tail_cdf_at_mid(alpha: float) -> float:
            return (1.0 - r_mid**alpha) / (1.0 - r_max**alpha)

        # tail_cdf_at_mid rises from log(r_mid)/log(r_max) (alpha -> 0) towards 1: bisect on it.
        lo, hi = 1e-6, 50.0
        if not tail_cdf_at_mid(lo) < target < tail_cdf_at_mid(hi):
            raise ValueError(f"fraction_at_mid={self.fraction_at_mid} is not reachable with a Pareto tail")
        for _ in range(100):
            midpoint = 0.5 * (lo + hi)
            lo, hi = (midpoint, hi) if tail_cdf_at_mid(midpoint) < target else (lo, midpoint)
        return 0.5 * (lo + hi)


def sample_totals(n: int, rng: np.random.Generator, params: HeavyTailParams | None = None) -> np.ndarray:
    p = params or HeavyTailParams()
    in_body = rng.random(n) < p.body_fraction
    totals = np.empty(n, dtype=np.int64)
    n_body = int(in_body.sum())
    totals[in_body] = _truncated_lognormal(n_body, rng, p)
    totals[~in_body] = _truncated_pareto(n - n_body, rng, p)
    return totals


def _truncated_lognormal(n: int, rng: np.random.Generator, p: HeavyTailParams) -> np.ndarray:
    out = np.empty(0, dtype=np.int64)
    mu = math.log(p.body_median)
    while out.size < n:
        draw = np.ceil(rng.lognormal(mu, p.body_sigma, size=max(64, int((n - out.size) * 1.2))))
        out = np.concatenate((out, draw[(draw >= p.body_min) & (draw <= p.knee)].astype(np.int64)))
    return out[:n]


def _truncated_pareto(n: int, rng: np.random.Generator, p: HeavyTailParams) -> np.ndarray:
    alpha = p.tail_alpha
    u = rng.random(n)
    x = p.knee * (1.0 - u * (1.0 - (p.knee / p.max_tokens) ** alpha)) ** (-1.0 / alpha)
    return np.clip(np.ceil(x), p.knee + 1, p.max_tokens).astype(np.int64)


def heavy_tail_trace(
    n: int,
    rng: np.random.Generator,
    params: HeavyTailParams | None = None,
    input_fraction: float = DEFAULT_INPUT_FRACTION,
    max_output_tokens: int | None = None,
) -> Trace:
    return trace_from_totals("synthetic-heavy-tail", sample_totals(n, rng, params), input_fraction, max_output_tokens)
