"""Exact at the boundary (opt-in): count the prompt with the served model's own tokenizer, but only
when the tokenizer-free estimate cannot tell which side of ``B_short`` the request falls on.

Within-category variance leaves a band around ``B_short`` where no character-class model is sure; the
v2 estimator knows that band (its lower and upper margins). Requests whose band holds the threshold
are few, so counting them exactly (PyPI ``quicktok-v1``: ~150 µs for 30 KB) costs little on average,
and everything else stays tokenizer-free.

The exact count covers the message texts and the tool JSON; what the chat template adds (role
headers, tool preamble) is not in the text, so it is learned from ``usage`` as a residual
``prompt_tokens − counted`` per (model, category), and routing adds its mean plus ``z·σ`` (the same
under-estimate target as v2) and a small slack. Until residuals are seen, the v2 model's own framing
weights stand in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

Counter = Callable[[str], int]
ENCODINGS = ("cl100k_base", "o200k_base", "llama3", "qwen3")


@dataclass(frozen=True, slots=True)
class ExactBandParams:
    tokenizers: Mapping[str, str] = field(default_factory=dict)  # served model name -> quicktok encoding
    slack_tokens: int = 16  # added to every exact estimate: template details the residual has not seen
    forgetting: float = 0.95


def load_counter(encoding: str) -> Counter:
    """A token counter from ``quicktok`` (optional extra ``exact``); raises ValueError naming the fix."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown tokenizer {encoding!r}; choose one of {', '.join(ENCODINGS)}")
    try:
        import quicktok
    except ImportError:
        raise ValueError("estimator.exact_band needs the optional extra: pip install 'budget-router[exact]'") from None
    enc = quicktok.get_encoding(encoding)
    return enc.count


@dataclass(slots=True)
class Residual:
    """Exponentially weighted mean and variance of ``prompt_tokens − counted``."""

    mean: float = 0.0
    var: float = 0.0
    samples: int = 0

    def add(self, value: float, lam: float) -> None:
        w = max(1.0 - lam, 1.0 / (self.samples + 1))
        delta = value - self.mean
        self.mean += w * delta
        self.var = (1.0 - w) * (self.var + w * delta * delta)
        self.samples += 1


class ExactBand:
    """Tokenizers for the configured models, and the learned template residual per (model, category)."""

    def __init__(self, params: ExactBandParams, z: float, counters: Mapping[str, Counter] | None = None) -> None:
        self.params = params
        self.z = z
        self._counters: dict[str, Counter] = dict(counters or {})
        for model, encoding in params.tokenizers.items():
            if model not in self._counters:
                self._counters[model] = load_counter(encoding)
        self._residuals: dict[tuple[str, str], Residual] = {}
        self.fired = 0  # how many estimates were counted exactly (a metric)

    def counter(self, model: str | None) -> Counter | None:
        return self._counters.get(model) if model else None

    def count(self, model: str | None, texts: tuple[str, ...], structured_json: str = "") -> int | None:
        """Exact tokens of the texts and tool JSON, or None when the model has no tokenizer."""
        counter = self.counter(model)
        if counter is None:
            return None
        self.fired += 1
        total = sum(counter(t) for t in texts if t)
        return total + (counter(structured_json) if structured_json else 0)

    def residual(self, model: str, category: str) -> Residual:
        key = (model, category)
        found = self._residuals.get(key)
        if found is None:
            found = self._residuals[key] = Residual()
        return found

    def routed(self, model: str, category: str, counted: int, framing_guess: float) -> int:
        """Prompt tokens to route with: the count plus the template residual's upper bound."""
        res = self._residuals.get((model, category))
        extra = framing_guess
        if res is not None and res.samples >= 3:
            extra = res.mean + self.z * math.sqrt(res.var)
        return counted + math.ceil(max(0.0, extra)) + self.params.slack_tokens

    def learn(self, model: str, category: str, counted: int, prompt_tokens: int) -> None:
        self.residual(model, category).add(float(prompt_tokens - counted), self.params.forgetting)
