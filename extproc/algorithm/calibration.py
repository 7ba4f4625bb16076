"""Online bytes-per-token calibration per content category, learned from ``usage.prompt_tokens``.

    c_obs = bytes / tokens
    ĉ <- ĉ + w·(c_obs − ĉ),  σ̂ <- σ̂ + w·(|c_obs − ĉ_old| − σ̂),  c* = ĉ − γ·σ̂

with w = max(1 − β, 1/(n + 1)). The paper's plain EMA (w = 1 − β) from the 4.0 cold start needs
~80 samples to bring CJK (~1.5 B/token) within 3.5 %. Averaging the first samples until the EMA
weight takes over (n ≥ 20) reaches the true ratio within 50 samples and is the same EMA afterwards;
the cold start stays the ratio of unseen categories and the gate below, and the first deviation
(measured against the cold start) keeps σ̂, hence the safety margin, wide while samples are few.

Safety: c* is what routing uses, and smaller means more tokens (safer). Each category starts from
its prior (4.0, the paper's cold start, except CJK 1.5, mixed 2.5 and odd 1.0: CJK tokenises at
1.3-3.8 B/token depending on the tokenizer, so 4.0 would undercount it up to 3x and overflow the
short pool on the first requests; odd text, random identifiers and digit runs, at 1.0-1.8). Until
``min_samples`` observations a category may only become *more* conservative than its prior,
observations outside [min_ratio, max_ratio] are rejected (a backend lying in usage cannot push the
ratio out), and once warmed up, far outliers are rejected too, except a *trusted* observation (the
engine's count of a request the estimate misplaced, marked by the caller): far from the mean, it
says the category does not describe that text, not that the engine lies, so it is learned with
bounded influence (clipped to the outlier bound): one such sample cannot move the category far, many
that agree can.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CalibrationParams:
    beta: float = 0.95
    gamma: float = 1.0
    cold_start: float = 4.0
    min_samples: int = 10
    min_ratio: float = 0.5
    max_ratio: float = 8.0
    outlier_factor: float = 0.6
    converged_samples: int = 50
    # Share of a converged category's responses still observed (1.0 = all; lower saves CPU).
    converged_sample_rate: float = 0.1
    # Per-category cold starts (category, bytes/token) that replace ``cold_start``; see README.
    priors: tuple[tuple[str, float], ...] = (("cjk", 1.5), ("mixed", 2.5), ("odd", 1.0))


class Observation(enum.Enum):
    ACCEPTED = "accepted"
    INVALID = "invalid"  # zero/negative tokens or bytes
    OUT_OF_BOUNDS = "out_of_bounds"
    OUTLIER = "outlier"


@dataclass(slots=True)
class CategoryState:
    mean: float
    dev: float = 0.0
    samples: int = 0


class Calibrator:
    def __init__(self, params: CalibrationParams | None = None, categories: Iterable[str] = ()) -> None:
        self.params = params or CalibrationParams()
        self._state: dict[str, CategoryState] = {}
        self._ratio_cache: dict[str, float] = {}
        self._priors = dict(self.params.priors)
        for name in categories:
            self.state(name)

    def state(self, category: str) -> CategoryState:
        st = self._state.get(category)
        if st is None:
            st = self._state[category] = CategoryState(mean=self.prior(category))
        return st

    def prior(self, category: str) -> float:
        return self._priors.get(category, self.params.cold_start)

    def categories(self) -> dict[str, CategoryState]:
        return dict(self._state)

    def ratio(self, category: str) -> float:
        """Conservative bytes/token c* used for routing; cached until the category learns again."""
        cached = self._ratio_cache.get(category)
        if cached is not None:
            return cached
        p, st = self.params, self.state(category)
        c_star = st.mean - p.gamma * st.dev
        if st.samples < p.min_samples:
            c_star = min(c_star, self.prior(category))
        c_star = min(max(c_star, p.min_ratio), p.max_ratio)
        self._ratio_cache[category] = c_star
        return c_star

    def converged(self, category: str) -> bool:
        return self.state(category).samples >= self.params.converged_samples

    def observe(self, category: str, nbytes: float, tokens: float, trusted: bool = False) -> Observation:
        if not (nbytes > 0 and tokens > 0):
            return Observation.INVALID
        p, st = self.params, self.state(category)
        c_obs = nbytes / tokens
        if not p.min_ratio <= c_obs <= p.max_ratio:
            return Observation.OUT_OF_BOUNDS
        deviation = abs(c_obs - st.mean)
        limit = max(p.outlier_factor * st.mean, 4.0 * st.dev)
        if st.samples >= p.min_samples and deviation > limit:
            if not trusted:
                return Observation.OUTLIER
            c_obs = st.mean + math.copysign(limit, c_obs - st.mean)  # bounded influence
            deviation = limit
        w = max(1.0 - p.beta, 1.0 / (st.samples + 1))
        st.mean = min(max(st.mean + w * (c_obs - st.mean), p.min_ratio), p.max_ratio)
        st.dev += w * (deviation - st.dev)
        st.samples += 1
        self._ratio_cache.pop(category, None)
        return Observation.ACCEPTED

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {k: {"mean": s.mean, "dev": s.dev, "samples": s.samples} for k, s in self._state.items()}

    def load(self, data: Mapping[str, Any]) -> list[str]:
        """Restore a snapshot; malformed or out-of-bounds entries are skipped and returned as problems."""
        states, problems = parse_categories(data, self.params)
        self._state.update(states)
        self._ratio_cache.clear()
        return problems

    def merge(self, peers: Iterable[Mapping[str, Any]]) -> list[str]:
        """Blend other replicas' snapshots in, weighted by sample counts, so replicas agree.

        Not thread-safe (nor is ``observe``/``ratio``): call it on the thread that routes.
        Returns the entries it skipped as malformed.
        """
        problems: list[str] = []
        for peer in peers:
            states, skipped = parse_categories(peer, self.params)
            problems += skipped
            for name, other in states.items():
                n = other.samples
                if n <= 0:
                    continue
                st = self.state(name)
                total = st.samples + n
                st.mean = (st.mean * st.samples + other.mean * n) / total if st.samples else other.mean
                st.dev = (st.dev * st.samples + other.dev * n) / total if st.samples else other.dev
                st.samples = max(st.samples, n)
        self._ratio_cache.clear()
        return problems


def finite_number(value: Any) -> float | None:
    """A finite JSON number (bools are ints to Python, not numbers to us), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def parse_category(entry: Any, params: CalibrationParams) -> CategoryState | str:
    """One category of a snapshot (``{"mean", "dev", "samples"}``), or why it cannot be used.

    The one validating parser of the snapshot format: the state file, ``load`` and ``merge`` all go
    through it. Extra keys are ignored, so a later format may add fields without breaking this one.
    """
    if isinstance(entry, CategoryState):
        return entry
    if not isinstance(entry, Mapping):
        return f"not an object: {type(entry).__name__}"
    mean, dev, samples = finite_number(entry.get("mean")), finite_number(entry.get("dev")), entry.get("samples")
    if isinstance(samples, float) and samples.is_integer():
        samples = int(samples)
    if mean is None or dev is None or isinstance(samples, bool) or not isinstance(samples, int):
        return "mean and dev must be finite numbers and samples an integer"
    if samples < 0:
        return f"negative samples {samples}"
    if not params.min_ratio <= mean <= params.max_ratio or not 0.0 <= dev <= params.max_ratio:
        return f"mean {mean} or dev {dev} outside [{params.min_ratio}, {params.max_ratio}]"
    return CategoryState(mean=mean, dev=dev, samples=samples)


def parse_categories(data: Any, params: CalibrationParams) -> tuple[dict[str, CategoryState], list[str]]:
    """A whole snapshot: the usable categories, and one problem line per skipped one."""
    if not isinstance(data, Mapping):
        return {}, [f"categories: not an object: {type(data).__name__}"]
    states: dict[str, CategoryState] = {}
    problems: list[str] = []
    for name, entry in data.items():
        parsed = parse_category(entry, params)
        if isinstance(parsed, str):
            problems.append(f"category {name!r}: {parsed}")
        else:
            states[str(name)] = parsed
    return states, problems
