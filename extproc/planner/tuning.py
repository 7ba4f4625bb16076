"""Which vLLM scheduler limits a pool should run: ``max_num_seqs`` and ``max_num_batched_tokens``.

The answer depends on the traffic and the SLO, so it is searched, not assumed. Each candidate is
*screened*: the fewest instances that meet the SLOs, found on a scaled-down copy of the pool — the
same per-instance load on a fleet of ``SCREEN_FLEET`` instances (or the whole pool when it is smaller),
``SCREEN_REQUESTS`` requests of the pool's own traffic — and scaled back up. Under least-request (power
of two choices) or round-robin balancing an instance's load depends on its own arrival rate, not on how
many siblings it has, so the scaled fleet ranks candidates as the full one would; the plan then sizes
the chosen candidate at full scale on the full workload. Screening one candidate costs about as much as
one full-scale simulation.

The search starts at vLLM's own A100 defaults (256 sequences, 2,048 batched tokens) and screens one
knob's whole line at a time (every value of it, the other held), moving to the cheapest point when it is
cheaper by more than ``IMPROVEMENT``, alternating the two knobs until neither moves. Whole lines, not
neighbours: the cost is not convex in the chunk size (on azure-code's homogeneous fleet 512 batched
tokens came out cheaper than 2,048 while 1,024 did not), so a walk that stops at the first dearer
neighbour settles in a local minimum, and the baseline it reports is not the best one. ``max_num_seqs`` ranges from the
paper's worst-case reservation (KV cache / context: 16 at 64K) to what on-demand KV blocks can hold at
the traffic's mean request size (KV cache / mean tokens, at most vLLM's 1,024); beyond the worst case a
pool can preempt, which the simulator models.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from extproc.planner.capacity import instances_for, prefill_floor_p99, saturated_throughput
from extproc.planner.fleet import FleetSim, PoolConfig
from extproc.planner.profiles import InstanceProfile
from extproc.planner.service_levels import UTILISATION, Slo, summarise
from extproc.planner.sim_workload import SimWorkload
from extproc.planner.sizing import size_pools

SCREEN_REQUESTS = 12_000
SCREEN_FLEET = 32
DEFAULT_CHUNKS = (512, 1024, 2048, 4096, 8192, 16384)
SEQ_STEPS = (32, 64, 128, 256, 512, 1024)
VLLM_DEFAULT = (256, 2048)  # vLLM's max_num_seqs, max_num_batched_tokens for the API server on A100
IMPROVEMENT = 0.01  # a neighbour must be cheaper by more than this share to move the search


@dataclass(frozen=True)
class Candidate:
    seqs: int
    chunk: int

    def label(self) -> str:
        return f"seqs={self.seqs},chunk={self.chunk}"


@dataclass(frozen=True)
class Screen:
    """A candidate's screening answer: instances for the full rate (a float: a scaled fleet's size
    divided by its scale), what bound it, and the scaled run's P99s at that size."""

    seqs: int
    chunk: int
    instances: float
    feasible: bool
    binding: str
    mu: float
    scale: float
    sims: int
    ttft_p99_s: float = math.nan
    tpot_p99_s: float = math.nan
    itl_p99_s: float = math.nan
    preemptions_per_1k: float = 0.0

    @property
    def cost(self) -> float:
        """What the search minimises: whole instances (a pool cannot run 0.3 of one)."""
        return math.ceil(self.instances - 1e-9) if self.feasible else math.inf

    def as_dict(self) -> dict[str, object]:
        return {
            "max_num_seqs": self.seqs,
            "max_num_batched_tokens": self.chunk,
            "instances": self.instances,
            "feasible": self.feasible,
            "binding": self.binding,
            "mu": self.mu,
            "scale": self.scale,
            "simulations": self.sims,
            "ttft_p99_s": self.ttft_p99_s,
            "tpot_p99_s": self.tpot_p99_s,
            "itl_p99_s": self.itl_p99_s,
            "preemptions_per_1k": self.preemptions_per_1k,
        }


def seqs_grid(profile: InstanceProfile, traffic: SimWorkload, max_seqs: int = 1024) -> tuple[int, ...]:
    """From the worst-case reservation up to what the KV cache holds at the traffic's mean size."""
    worst = profile.worst_case_seqs
    fits = traffic.total[traffic.total <= profile.max_model_len]
    mean = float(np.mean(fits)) if len(fits) else float(profile.max_model_len)
    cap = min(max_seqs, profile.kv_capacity_tokens / max(mean, 1.0))
    return tuple(sorted({worst} | {v for v in SEQ_STEPS if worst < v <= cap}))


def chunk_grid(seqs: int, chunks: Sequence[int]) -> tuple[int, ...]:
    """vLLM requires max_num_batched_tokens >= max_num_seqs."""
    return tuple(c for c in sorted(chunks) if c >= seqs)


def start_candidate(seqs: Sequence[int], chunks: Sequence[int]) -> Candidate:
    """vLLM's defaults, or the nearest point of the grid."""
    s = min(seqs, key=lambda v: (abs(math.log(v / VLLM_DEFAULT[0])), v))
    cs = chunk_grid(s, chunks) or (max(s, max(chunks)),)
    c = min(cs, key=lambda v: (abs(math.log(v / VLLM_DEFAULT[1])), v))
    return Candidate(s, c)


def screen(
    profile: InstanceProfile,
    traffic: SimWorkload,
    rate: float,
    slo: Slo,
    rng: np.random.Generator,
    *,
    balancer: str,
    warmup: float,
    requests: int = SCREEN_REQUESTS,
    fleet: int = SCREEN_FLEET,
    seed: int = 0,
    hint: float | None = None,
    on_sim: Callable[[str], None] | None = None,
) -> Screen:
    """The fewest instances of ``profile`` that serve ``rate`` req/s of ``traffic`` within the SLOs,
    estimated on a scaled-down fleet (see the module docstring). ``hint``: a full-scale estimate to
    start from (a neighbouring candidate's answer), which saves the bracketing up from the floor."""
    seqs, chunk = profile.max_num_seqs, profile.max_num_batched_tokens
    if rate <= 0 or not len(traffic):
        return Screen(seqs, chunk, 0.0, True, "no traffic", math.nan, 1.0, 0)
    mu = saturated_throughput(profile, traffic, rng)
    if not math.isfinite(mu) or mu <= 0:
        return Screen(seqs, chunk, math.inf, False, "nothing fits the context", mu, 1.0, 1)
    floor_full = rate / (slo.util_cap * mu)
    scale = min(1.0, fleet / floor_full)
    floor = instances_for(rate * scale, mu, slo.util_cap)
    start = max(floor, round(hint * scale)) if hint is not None and math.isfinite(hint) else floor
    wl = traffic.resampled(rng, n=requests, rate=rate * scale)
    if prefill_floor_p99(profile, wl) > slo.ttft_p99_s:
        return Screen(seqs, chunk, math.inf, False, "prefill floor over the TTFT SLO", mu, scale, 1)
    seen: dict[int, tuple[str, ...]] = {}
    p99s: dict[int, tuple[float, float, float, float]] = {}

    def check(sizes: tuple[int, ...]) -> list[bool]:
        if on_sim is not None:
            on_sim(f"screen {profile.name} x{sizes[0]}")
        res = FleetSim([PoolConfig("screen", profile, sizes[0], balancer)]).run(wl, warmup=warmup, seed=seed)
        m = summarise(res)[0]
        seen[sizes[0]] = m.failures(slo)
        p99s[sizes[0]] = (m.ttft_p99_s, m.tpot_p99_s, m.itl_p99_s, m.preemptions_per_1k)
        return [not seen[sizes[0]]]

    sized = size_pools(check, (start,), floor=(floor,), tolerance=0.02, first_step=0.05, max_trials=16)
    n = sized.sizes[0]
    if not sized.feasible:
        missed = "+".join(seen.get(n, ())) or sized.reason
        return Screen(seqs, chunk, math.inf, False, missed, mu, scale, 1 + len(sized.trials))
    below = [(s, v) for s, v in seen.items() if s < n and v]
    binding = "+".join(max(below)[1]) if below else UTILISATION
    ttft, tpot, itl, pre = p99s[n]
    return Screen(seqs, chunk, n / scale, True, binding, mu, scale, 1 + len(sized.trials), ttft, tpot, itl, pre)


Evaluate = Callable[[Sequence[Candidate]], Sequence[Screen]]


@dataclass
class Search:
    best: Candidate
    screens: dict[Candidate, Screen]
    seqs: tuple[int, ...]
    chunks: tuple[int, ...]
    path: list[Candidate]

    def line(self, knob: str) -> list[Screen]:
        """Every screened candidate that differs from the best in ``knob`` only, in grid order."""
        if knob == "seqs":
            keep = [c for c in self.screens if c.chunk == self.best.chunk]
            return [self.screens[c] for c in sorted(keep, key=lambda c: c.seqs)]
        keep = [c for c in self.screens if c.seqs == self.best.seqs]
        return [self.screens[c] for c in sorted(keep, key=lambda c: c.chunk)]

    def as_dict(self) -> dict[str, object]:
        return {
            "chosen": {"max_num_seqs": self.best.seqs, "max_num_batched_tokens": self.best.chunk},
            "grid": {"max_num_seqs": list(self.seqs), "max_num_batched_tokens": list(self.chunks)},
            "path": [c.label() for c in self.path],
            "screened": [
                s.as_dict() for _, s in sorted(self.screens.items(), key=lambda kv: (kv[0].seqs, kv[0].chunk))
            ],
        }


def search(
    evaluate: Evaluate, seqs: Sequence[int], chunks: Sequence[int], *, full_lines: bool = False, rounds: int = 3
) -> Search:
    """Coordinate search over (max_num_seqs, max_num_batched_tokens). ``evaluate`` screens a batch of
    candidates (in parallel when it can). ``full_lines``: afterwards screen every grid point on the two
    lines through the best, for the sensitivity table."""
    seqs, chunks = tuple(sorted(seqs)), tuple(sorted(chunks))
    screens: dict[Candidate, Screen] = {}

    def run(cands: Sequence[Candidate]) -> None:
        todo = [c for c in dict.fromkeys(cands) if c not in screens]
        if todo:
            for c, s in zip(todo, evaluate(todo), strict=True):
                screens[c] = s

    def line(knob: str, through: Candidate) -> list[Candidate]:
        if knob == "chunk":
            return [Candidate(through.seqs, c) for c in chunk_grid(through.seqs, chunks)]
        return [Candidate(s, through.chunk) for s in seqs if through.chunk >= s]

    best = start_candidate(seqs, chunks)
    run([best])
    path = [best]
    settled = 0  # knobs in a row whose whole line through the best found nothing cheaper
    for knob in ("chunk", "seqs") * rounds:
        cands = line(knob, best)
        run(cands)
        cheapest = min(cands, key=lambda c: (screens[c].cost, c != best))
        if screens[cheapest].cost < screens[best].cost * (1 - IMPROVEMENT):
            best, settled = cheapest, 0
            path.append(best)
        else:
            settled += 1
            if settled == 2:
                break
    if full_lines:  # the sensitivity table reads both lines through the final choice
        run(line("chunk", best) + line("seqs", best))
    return Search(best, screens, seqs, chunks, path)
