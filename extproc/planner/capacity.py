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
    batched = max(short.max_num_batched_tokens, seqs)
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
    res = FleetSim([PoolConfig("saturation", unbounded, 1)]).run(sample, warmup=0.0)
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
    chunk = p.max_num_batched_tokens
    full, rem = np.floor_divide(prompt, chunk), np.mod(prompt, chunk)

    def step(tokens: np.ndarray | float) -> np.ndarray:
        return (
            p.step_floor_s
            + p.allreduce_floor_s
            + p.allreduce_per_token_s * np.asarray(tokens)
            + p.step_per_token_s * np.maximum(0.0, np.asarray(tokens) - p.step_knee_tokens)
        )

    floor = full * step(float(chunk)) + np.where(rem > 0, step(rem), 0.0)
    floor = floor + p.prefill_attn_per_pair_s * prompt * prompt / 2.0
    return float(np.percentile(floor, 99))


def instances_for(rate: float, mu: float, util_cap: float) -> int:
    """The fewest instances that keep offered load at or below the utilisation cap."""
    if rate <= 0:
        return 0
    return max(1, math.ceil(rate / (util_cap * mu) - 1e-9))


def erlang_c(servers: int, offered: float) -> float:
    """P(wait) of M/M/c with ``offered`` = λ/μ Erlangs, through the Erlang B recursion: stable for the
    thousands of batch slots a fleet has, where the textbook sum of a^k/k! overflows."""
    if servers < 1:
        raise ValueError("an M/M/c queue needs at least one server")
    if offered <= 0:
        return 0.0
    if offered >= servers:
        return 1.0
    b = 1.0
    for k in range(1, servers + 1):
        b = offered * b / (k + offered * b)
    return servers * b / (servers - offered * (1.0 - b))


def erlang_c_wait(servers: int, lam: float, mu: float) -> tuple[float, float]:
    """P(wait) and mean wait of M/M/c with arrival rate ``lam`` and per-server rate ``mu``."""
    p = erlang_c(servers, lam / mu)
    return p, (p / (servers * mu - lam) if p < 1.0 else math.inf)


@dataclasses.dataclass(frozen=True)
class ErlangComparison:
    """The simulator against M/M/c on one pool's batch slots.

    Both figures are taken beyond one iteration, where the iteration boundary no longer blurs them:
    P(wait > one iteration) = C·e^(−(cμ−λ)w), and a wait past w exceeds it by 1/(cμ−λ) on average
    (the exponential tail is memoryless).
    """

    pool: str
    slots: int
    load: float
    iteration_s: float
    requests: int
    sim_p_wait: float
    erlang_p_wait: float
    sim_excess_wait_s: float
    erlang_excess_wait_s: float

    @property
    def comparable(self) -> bool:
        """Whether M/M/c applies: waits common enough to measure and long against one step. Where a
        wait is a few steps the simulator's admission at step boundaries (a discrete-time queue) is
        what differs from Erlang's continuous time, not the event loop."""
        return self.erlang_p_wait >= 0.01 and self.erlang_excess_wait_s >= 20 * self.iteration_s

    @property
    def p_wait_error(self) -> float:
        return self.sim_p_wait / self.erlang_p_wait - 1.0 if self.erlang_p_wait > 0 else math.nan

    @property
    def excess_wait_error(self) -> float:
        return self.sim_excess_wait_s / self.erlang_excess_wait_s - 1.0 if self.erlang_excess_wait_s > 0 else math.nan

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            **dataclasses.asdict(self),
            "p_wait_error": self.p_wait_error,
            "excess_wait_error": self.excess_wait_error,
            "comparable": self.comparable,
        }


def erlang_comparison(
    pool: str,
    profile: InstanceProfile,
    rng: np.random.Generator,
    *,
    load: float = 0.9,
    requests: int = 200_000,
    mean_output: int = 200,
) -> ErlangComparison:
    """Run one instance of ``profile`` where M/M/c holds exactly, and compare its waits with Erlang C.

    The profile keeps its batch slots (``max_num_seqs``: the servers) and its full-batch iteration
    time, made constant; prompts are a few tokens and outputs geometric, so service is exponential
    and nothing but slot contention delays a request. Agreement says the event loop, admission and
    batching of this pool are sound; it says nothing about the iteration-cost model.
    """
    c = profile.max_num_seqs
    w = profile.step_s(c)
    out = np.minimum(rng.geometric(1.0 / mean_output, requests), profile.max_model_len - 16).astype(np.int64)
    prof = dataclasses.replace(
        profile,
        step_floor_s=w,
        step_knee_tokens=0,
        step_per_token_s=0.0,
        allreduce_floor_s=0.0,
        allreduce_per_token_s=0.0,
        kv_read_per_token_s=0.0,
        prefill_attn_per_pair_s=0.0,
        max_num_batched_tokens=max(profile.max_num_batched_tokens, 16 * c),
        kv_capacity_tokens=max(profile.kv_capacity_tokens, c * (int(out.max()) + 32)),
        max_waiting=None,
    )
    mu_slot = 1.0 / (float(out.mean()) * w)
    arrival = np.cumsum(rng.exponential(1.0 / (load * c * mu_slot), requests))
    prompt = np.full(requests, 8, dtype=np.int64)
    wl = SimWorkload("erlang", arrival, prompt, out, ("prose",) * requests, prompt * 4)
    res = FleetSim([PoolConfig(pool, prof, 1)]).run(wl, warmup=0.0)
    wait = (res.first_token - arrival - w)[requests // 10 :]  # first token = admission + one prefill iteration
    lam = (requests - 1) / float(arrival[-1] - arrival[0])
    p, _ = erlang_c_wait(c, lam, mu_slot)
    drain = c * mu_slot - lam
    waited = wait[wait > w]
    return ErlangComparison(
        pool,
        c,
        load,
        w,
        len(wait),
        float(len(waited) / len(wait)),
        p * math.exp(-drain * w),
        float(np.mean(waited) - w) if len(waited) else math.nan,
        1.0 / drain,
    )
