"""Workloads from a CDF of total tokens (input + output), the format fleet-sim ships: a JSON list of
``[tokens, cumulative_fraction]`` pairs, or ``{"cdf": [...], ...}`` with other keys ignored.

Sampling is inverse-transform with linear interpolation inside each bin, i.e. uniform within bins; the
first bin runs from 0 tokens. Totals are rounded up and clipped to at least 2 so that both the prompt
and the output get a token.

Split rule (``split_totals``): ``prompt = floor(input_fraction * total)``, clamped to ``[1, total - 1]``;
``output = total - prompt``. The default ``input_fraction = 0.8`` is fleet-sim's, so results compare
with it. ``max_output_tokens`` optionally caps the output, moving the excess to the prompt (the
2023 Azure traces generate ~10% of their tokens, and rarely more than a few hundred).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from extproc.workload.trace import Trace, TraceRequest, malformed, read_text

MIN_TOTAL = 2
DEFAULT_INPUT_FRACTION = 0.8
_PAIR_RE = re.compile(r"\[\s*[-+0-9.eE]+\s*,\s*[-+0-9.eE]+\s*\]")


@dataclass(frozen=True)
class CdfTable:
    """Breakpoints of a total-token CDF. ``tokens`` strictly increasing (> 0), ``fractions``
    non-decreasing in [0, 1] ending at 1."""

    tokens: np.ndarray
    fractions: np.ndarray

    @classmethod
    def from_pairs(cls, pairs: list[tuple[float, float]]) -> CdfTable:
        errors = validate_pairs(pairs)
        if errors:
            index, message = errors[0]
            raise ValueError(f"entry {index}: {message}")
        t, f = zip(*pairs, strict=True)
        return cls(np.asarray(t, dtype=np.float64), np.asarray(f, dtype=np.float64))

    @property
    def max_tokens(self) -> int:
        return max(MIN_TOTAL, int(np.ceil(self.tokens[-1])))

    def inverse(self, u: np.ndarray | float) -> np.ndarray:
        """Total tokens at cumulative probability ``u`` (array in [0, 1]); non-decreasing in ``u``."""
        u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
        xs = np.concatenate(([0.0], self.fractions))
        ys = np.concatenate(([0.0], self.tokens))
        hi = np.clip(np.searchsorted(xs, u, side="right"), 1, len(xs) - 1)
        lo = hi - 1
        width = xs[hi] - xs[lo]
        frac = np.divide(u - xs[lo], width, out=np.ones_like(u), where=width > 0)
        values = ys[lo] + np.clip(frac, 0.0, 1.0) * (ys[hi] - ys[lo])
        values = np.where(u >= xs[-1], ys[-1], values)
        return np.clip(np.ceil(values - 1e-9), MIN_TOTAL, self.max_tokens).astype(np.int64)

    def sample_totals(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.inverse(rng.random(n))

    def fraction_at_most(self, tokens: float) -> float:
        """F(tokens) by the same linear interpolation the sampler inverts."""
        xs = np.concatenate(([0.0], self.tokens))
        ys = np.concatenate(([0.0], self.fractions))
        return float(np.interp(tokens, xs, ys))


def validate_pairs(pairs: object) -> list[tuple[int, str]]:
    """Problems with a CDF's breakpoints as (entry index, message); empty when valid."""
    if not isinstance(pairs, list) or not pairs:
        return [(0, "a CDF needs a non-empty list of [tokens, cumulative_fraction] pairs")]
    previous_t, previous_f = 0.0, 0.0
    for i, pair in enumerate(pairs):
        if (
            not isinstance(pair, list | tuple)
            or len(pair) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in pair)
        ):
            return [(i, f"expected [tokens, cumulative_fraction], got {pair!r}")]
        t, f = float(pair[0]), float(pair[1])
        if not np.isfinite(t) or t <= previous_t:
            return [(i, f"tokens must be finite, positive and strictly increasing, got {pair[0]!r}")]
        if not 0.0 <= f <= 1.0 or f < previous_f:
            return [(i, f"cumulative_fraction must be in [0, 1] and non-decreasing, got {pair[1]!r}")]
        previous_t, previous_f = t, f
    if abs(previous_f - 1.0) > 1e-6:
        return [(len(pairs) - 1, f"the CDF must end at 1.0, ends at {previous_f!r}")]
    return []


def _entry_line(text: str, index: int) -> int | None:
    """Line of the ``index``-th ``[a, b]`` pair in the file, for error messages."""
    for i, match in enumerate(_PAIR_RE.finditer(text)):
        if i == index:
            return text.count("\n", 0, match.start()) + 1
    return None


def load_cdf(path: str | Path) -> CdfTable:
    path = Path(path)
    text = read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise malformed(path, exc.lineno, f"invalid JSON: {exc.msg}") from None
    pairs = data.get("cdf") if isinstance(data, dict) else data
    if isinstance(data, dict) and "cdf" not in data:
        raise malformed(path, 1, 'expected a list of pairs or an object with a "cdf" key')
    errors = validate_pairs(pairs)
    if errors:
        index, message = errors[0]
        raise malformed(path, _entry_line(text, index), f"cdf entry {index}: {message}")
    return CdfTable.from_pairs(pairs)  # type: ignore[arg-type]


def split_totals(
    totals: np.ndarray,
    input_fraction: float = DEFAULT_INPUT_FRACTION,
    max_output_tokens: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output tokens from totals by the rule in the module docstring."""
    if not 0.0 < input_fraction < 1.0:
        raise ValueError(f"input_fraction must be in (0, 1), got {input_fraction}")
    if max_output_tokens is not None and max_output_tokens < 1:
        raise ValueError(f"max_output_tokens must be >= 1, got {max_output_tokens}")
    totals = np.maximum(np.asarray(totals, dtype=np.int64), MIN_TOTAL)
    prompts = np.clip(np.floor(totals * input_fraction).astype(np.int64), 1, totals - 1)
    outputs = totals - prompts
    if max_output_tokens is not None:
        outputs = np.minimum(outputs, max_output_tokens)
        prompts = totals - outputs
    return prompts, outputs


def trace_from_totals(
    name: str, totals: np.ndarray, input_fraction: float = DEFAULT_INPUT_FRACTION, max_output_tokens: int | None = None
) -> Trace:
    """An untimed trace (arrivals 0, to be re-timed) from sampled totals."""
    prompts, outputs = split_totals(totals, input_fraction, max_output_tokens)
    requests = tuple(TraceRequest(0.0, p, o) for p, o in zip(prompts.tolist(), outputs.tolist(), strict=True))
    return Trace(name, requests, timed=False)
