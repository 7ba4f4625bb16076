"""Per-instance capacity from the simulator and the paper's closed-form saving.

``μ`` is what one instance completes per second when its queue never empties (requests drawn from
the traffic it will serve): the paper's per-instance throughput (2.8 req/s long, 11.2 short), here
measured instead of assumed. ``ρ = μ_short / μ_homogeneous`` and ``α = F(B_short)`` give

    saving = α (1 − 1/ρ)

from G_h = λ/μ_h and G_d = αλ/(ρ μ_h) + (1 − α)λ/μ_h: no queueing, no SLO headroom, no rounding, and
the long pool assumed as fast per instance as the homogeneous one.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from extproc.planner.fleet import FleetSim, PoolConfig
from extproc.planner.profiles import InstanceProfile
from extproc.planner.sim_workload import SimWorkload


def closed_form_saving(alpha: float, rho: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be a fraction in [0, 1], got {alpha}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    return alpha * (1.0 - 1.0 / rho)


def alpha_at(totals: np.ndarray, b_short: int) -> float:
    """Share of requests whose true total tokens fit the short pool: F(B_short)."""
    return float(np.mean(totals <= b_short)) if len(totals) else 0.0


def short_pool_at(short: InstanceProfile, b_short: int) -> InstanceProfile:
    """The short pool provisioned for ``B_short`` as the paper provisions it: context = B_short and as
    many sequences as the same KV budget holds at that context (8K → 128 on A100, 16K → 64)."""
    if b_short == short.max_model_len:
        return short
    if b_short < short.block_size:
        raise ValueError(f"B_short {b_short} is below one KV block ({short.block_size} tokens)")
    seqs = max(1, short.max_num_seqs * short.max_model_len // b_short)
    batched = max(short.max_num_batched_tokens, seqs + 1)
    prof = dataclasses.replace(
        short,
        name=f"{short.name.split('/')[0]}/short@{b_short}",
        max_model_len=b_short,
        max_num_seqs=seqs,
        max_num_batched_tokens=batched,
    )
    prof.validate()
    return prof


def saturated_throughput(
    profile: InstanceProfile, wl: SimWorkload, rng: np.random.Generator, requests: int | None = None
) -> float:
    """Completions per second of one instance with an always-full queue, over the middle 80 % of
    completions (leaving out the ramp-up and the drain)."""
    fits = (wl.prompt + wl.output) <= profile.max_model_len
    if not fits.any():
        return float("nan")
    n = requests or max(3000, 25 * profile.max_num_seqs)
    idx = rng.choice(np.flatnonzero(fits), size=n, replace=True)
    sample = SimWorkload(
        "saturation",
        np.zeros(n),
        wl.prompt[idx],
        wl.output[idx],
        tuple(wl.category[i] for i in idx),
        wl.text_bytes[idx],
    )
    unbounded = dataclasses.replace(profile, max_waiting=None)
    res = FleetSim([PoolConfig("saturation", unbounded, 1)]).run(sample)
    ends = np.sort(res.finish)
    lo, hi = int(0.1 * n), int(0.9 * n)
    return (hi - lo) / max(ends[hi] - ends[lo], 1e-12)


def prefill_floor_p99(profile: InstanceProfile, wl: SimWorkload) -> float:
    """P99 TTFT of an empty instance (prefill alone, chunked): no fleet size can beat it."""
    p = profile
    fits = (wl.prompt + wl.output) <= p.max_model_len
    prompt = wl.prompt[fits].astype(np.float64)
    if not len(prompt):
        return 0.0
    iters = np.ceil(prompt / p.max_num_batched_tokens)
    floor = (
        iters * (p.iter_fixed_s + p.iter_per_seq_s)
        + p.prefill_per_token_s * prompt
        + p.prefill_attn_per_token_ctx_s * prompt * prompt / 2.0
    )
    return float(np.percentile(floor, 99))


def instances_for(rate: float, mu: float, util_cap: float) -> int:
    """The fewest instances that keep offered load at or below the utilisation cap."""
    if rate <= 0:
        return 0
    return max(1, math.ceil(rate / (util_cap * mu) - 1e-9))
