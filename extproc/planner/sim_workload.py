"""The simulator's view of a workload: arrays of arrival, true token counts, category and text bytes.

Traces carry token counts but no text. The router estimates from bytes, so each request gets the
bytes its prompt would have: its true text tokens (the prompt minus the chat template's framing)
times a bytes-per-token ratio drawn from its category's measured distribution. Estimation error and
calibration convergence then affect routing as they do in production.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from extproc.algorithm.budget import BudgetParams, framing_tokens
from extproc.algorithm.request_shape import CHAT, RequestShape
from extproc.workload.bytes_per_token import BytesPerTokenTable, default_table
from extproc.workload.trace import TraceRequest


class BytesPerToken(Protocol):
    """Per-category bytes/token distribution (what the real BPE measures on real text)."""

    def sample(self, category: str, prompt_tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


class MeasuredBytesPerToken:
    """The shipped measurements (``extproc/data/bytes_per_token.json``), drawn from the window size
    nearest each prompt's length: short prompts vary far more than long ones."""

    def __init__(self, table: BytesPerTokenTable | None = None) -> None:
        self.table = table or default_table()

    def sample(self, category: str, prompt_tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        out = np.empty(len(prompt_tokens))
        values, inverse = np.unique(prompt_tokens, return_inverse=True)
        groups: dict[int, tuple[Any, list[int]]] = {}
        for j, tokens in enumerate(values.tolist()):
            dist = self.table.distribution(category, prompt_tokens=int(tokens))
            groups.setdefault(id(dist), (dist, []))[1].append(j)
        for dist, members in groups.values():
            mask = np.isin(inverse, members)
            out[mask] = dist.sample(rng, int(mask.sum()))
        return out


@dataclass(frozen=True)
class SimWorkload:
    name: str
    arrival: np.ndarray  # seconds, non-decreasing
    prompt: np.ndarray  # true prompt tokens (what usage.prompt_tokens reports)
    output: np.ndarray  # tokens actually generated; also the request's max_tokens
    category: tuple[str, ...]
    text_bytes: np.ndarray

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def total(self) -> np.ndarray:
        return self.prompt + self.output

    def head(self, n: int) -> SimWorkload:
        return SimWorkload(
            self.name, self.arrival[:n], self.prompt[:n], self.output[:n], self.category[:n], self.text_bytes[:n]
        )

    @property
    def rate(self) -> float:
        """Mean arrival rate (req/s) over the workload's span."""
        span = float(self.arrival[-1] - self.arrival[0]) if len(self) > 1 else 0.0
        return (len(self) - 1) / span if span > 0 else 1.0

    def resampled(self, rng: np.random.Generator, n: int | None = None, rate: float | None = None) -> SimWorkload:
        """Another draw of the same traffic: ``n`` request sizes (with their bytes; default as many as
        here) resampled with replacement, arrivals a fresh Poisson process at ``rate`` (default this
        workload's mean rate). Used to check that a fleet sized on one sample holds on another, to give
        a pool that sees few requests a longer run of its own traffic, and for scaled-down screening."""
        if not len(self):
            raise ValueError(f"workload {self.name!r} has no requests to resample")
        n = len(self) if n is None else n
        idx = rng.integers(0, len(self), size=n)
        rate = self.rate if rate is None else rate
        arrival = np.cumsum(rng.exponential(1.0 / rate, size=n))
        return SimWorkload(
            self.name,
            arrival,
            self.prompt[idx],
            self.output[idx],
            tuple(self.category[i] for i in idx),
            self.text_bytes[idx],
        )

    def subset(self, mask: np.ndarray) -> SimWorkload:
        idx = np.flatnonzero(mask)
        return SimWorkload(
            self.name,
            self.arrival[idx],
            self.prompt[idx],
            self.output[idx],
            tuple(self.category[i] for i in idx),
            self.text_bytes[idx],
        )


def chat_framing(budget: BudgetParams | None = None) -> int:
    """Template tokens of a one-message chat request, as the router's estimator counts them."""
    return framing_tokens(
        RequestShape(endpoint=CHAT, category="prose", text_bytes=0, messages=1), budget or BudgetParams()
    )


def from_requests(
    name: str,
    requests: Sequence[TraceRequest],
    bpt: BytesPerToken,
    rng: np.random.Generator,
    budget: BudgetParams | None = None,
) -> SimWorkload:
    if not requests:
        raise ValueError(f"workload {name!r} has no requests")
    n = len(requests)
    arrival = np.fromiter((r.arrival_s for r in requests), dtype=np.float64, count=n)
    if np.any(np.diff(arrival) < 0):
        order = np.argsort(arrival, kind="stable")
        requests = [requests[i] for i in order]
        arrival = arrival[order]
    prompt = np.fromiter((r.prompt_tokens for r in requests), dtype=np.int64, count=n)
    output = np.fromiter((max(1, r.output_tokens) for r in requests), dtype=np.int64, count=n)
    category = tuple(r.category or "prose" for r in requests)
    framing = chat_framing(budget)
    text_tokens = np.maximum(prompt - framing, 1)
    ratio = np.empty(n)
    cats = np.array(category)
    for cat in sorted(set(category)):
        mask = cats == cat
        ratio[mask] = bpt.sample(cat, prompt[mask], rng)
    text_bytes = np.maximum(np.rint(text_tokens * ratio), 1).astype(np.int64)
    return SimWorkload(name, arrival, prompt, output, category, text_bytes)
