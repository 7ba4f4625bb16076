"""Which content category each request carries. Traces give sizes, not text; the category decides what
real text the replay sends and which bytes-per-token distribution the simulator draws from, so the
router's per-category calibration sees a realistic mix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from extproc.workload.trace import TraceRequest

CATEGORIES = ("prose", "code", "cjk", "mixed")
DEFAULT_WEIGHTS = {"prose": 0.60, "code": 0.25, "cjk": 0.10, "mixed": 0.05}


@dataclass(frozen=True)
class CategoryMix:
    """Normalised category weights, drawn for every request whose trace left the category open."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(CATEGORIES)
        if unknown:
            raise ValueError(f"unknown categories {sorted(unknown)}; known: {', '.join(CATEGORIES)}")
        if any(not w >= 0 or not np.isfinite(w) for w in self.weights.values()):
            raise ValueError(f"category weights must be finite and >= 0, got {dict(self.weights)}")
        total = sum(self.weights.values())
        if total <= 0:
            raise ValueError("at least one category weight must be > 0")
        object.__setattr__(self, "weights", {k: v / total for k, v in self.weights.items() if v > 0})

    @classmethod
    def parse(cls, text: str) -> CategoryMix:
        """``"prose=0.6,code=0.25,cjk=0.1,mixed=0.05"`` (weights need not sum to 1)."""
        weights: dict[str, float] = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, sep, value = item.partition("=")
            try:
                if not sep:
                    raise ValueError
                weights[name.strip()] = float(value)
            except ValueError:
                raise ValueError(f"category mix item {item!r} is not NAME=WEIGHT") from None
        if not weights:
            raise ValueError("empty category mix")
        return cls(weights)

    def draw(self, n: int, rng: np.random.Generator) -> list[str]:
        names = sorted(self.weights)
        probs = np.array([self.weights[k] for k in names])
        return [names[i] for i in rng.choice(len(names), size=n, p=probs)]

    def __str__(self) -> str:
        return ",".join(f"{k}={v:g}" for k, v in sorted(self.weights.items()))


def assign_categories(
    requests: Sequence[TraceRequest], mix: CategoryMix, rng: np.random.Generator
) -> list[TraceRequest]:
    """Fill in categories the trace left open; categories the trace set (e.g. the code trace) stay."""
    open_idx = [i for i, r in enumerate(requests) if r.category is None]
    out = list(requests)
    for i, category in zip(open_idx, mix.draw(len(open_idx), rng), strict=True):
        r = out[i]
        out[i] = TraceRequest(r.arrival_s, r.prompt_tokens, r.output_tokens, category)
    return out
