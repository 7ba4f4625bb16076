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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from extproc.algorithm.linalg import decay_add_outer, solve_spd
from extproc.algorithm.linear_estimator import ew_moments

Counter = Callable[[str], int]
ENCODINGS = ("cl100k_base", "o200k_base", "llama3", "qwen3")
MIN_RESIDUALS = 8  # residual samples before the fitted template cost replaces the v2 framing guess


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
    count: Counter = quicktok.get_encoding(encoding).count
    return count


def serialize(parts: Iterable[Any]) -> str | None:
    """Tool definitions and calls as compact JSON, the way templates render them (near enough: the
    difference is learned in the residual); None if a value cannot be serialised, and then the
    request is not counted exactly (a partial count would under-estimate)."""
    try:
        return "\n".join(orjson.dumps(p, option=orjson.OPT_NON_STR_KEYS).decode() for p in parts)
    except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
        return None


class Residual:
    """What the template adds to the counted text, ``prompt_tokens − counted ≈ r · (1, messages, tools,
    has tools)`` (a tool preamble is paid once per request with tools):
    an exponentially weighted least-squares fit (tool preambles and role headers differ per model), with
    the weighted mean and variance of its own out-of-sample errors."""

    __slots__ = ("a", "b", "err_mean", "err_var", "r", "samples")

    def __init__(self) -> None:
        self.a = [0.0] * 16
        self.b = [0.0] * 4
        self.r = [0.0] * 4
        self.err_mean = 0.0
        self.err_var = 0.0
        self.samples = 0

    def predict(self, messages: int, tools: int) -> float:
        return float(self.r[0] + self.r[1] * messages + self.r[2] * tools + (self.r[3] if tools else 0.0))

    def add(self, value: float, messages: int, tools: int, lam: float) -> None:
        if self.samples:
            error = value - self.predict(messages, tools)
            self.err_mean, self.err_var = ew_moments(self.err_mean, self.err_var, self.samples - 1, error, lam)
        decay_add_outer(self.a, self.b, (1.0, float(messages), float(tools), 1.0 if tools else 0.0), value, lam)
        r = solve_spd([v + (1e-3 if i % 5 == 0 else 0.0) for i, v in enumerate(self.a)], self.b)
        if r is not None:
            self.r = r
        self.samples += 1


class ExactBand:
    """Tokenizers for the configured models, and the learned template residual per (model, category)."""

    def __init__(self, params: ExactBandParams, counters: Mapping[str, Counter] | None = None) -> None:
        self.params = params
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

    def routed(
        self, model: str, category: str, counted: int, messages: int, tools: int, framing_guess: float, z: float
    ) -> int:
        """Prompt tokens to route with: the count plus the template residual's upper bound (``z`` σ)."""
        res = self._residuals.get((model, category))
        extra = framing_guess
        if res is not None and res.samples >= MIN_RESIDUALS:
            extra = res.predict(messages, tools) + res.err_mean + z * math.sqrt(res.err_var)
        return counted + math.ceil(max(0.0, extra)) + self.params.slack_tokens

    def learn(self, model: str, category: str, counted: int, prompt_tokens: int, messages: int, tools: int) -> None:
        self.residual(model, category).add(float(prompt_tokens - counted), messages, tools, self.params.forgetting)
