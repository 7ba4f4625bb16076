"""Request bodies whose text has exactly N tokens under a real BPE, cut from the shipped corpus, so the
router's byte count and the backend's ``usage.prompt_tokens`` relate as they would in production.

How a prompt is cut: take a random window of corpus tokens slightly longer than N, decode it, re-encode
the text (decoding a slice and re-encoding it does not always give back the same tokens: a window may
start inside a word or a multi-byte character), then cut the re-encoded tokens to N, decode and verify;
the cut is adjusted by the miss and, if a boundary cannot land on N exactly, another window is taken.
Every step is seeded, so a (category, N, seed, encoding) always gives the same text.

Categories: ``prose``, ``code``, ``cjk`` from their corpus folders; ``mixed`` interleaves prose and CJK
paragraphs of 64-384 tokens. N counts the content of the user message (or ``prompt``) only: a chat
template or a system message adds tokens on top, as it does for a real model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from extproc.workload.corpus import DEFAULT_ENCODING, corpus_tokens, get_encoding, token_window
from extproc.workload.mix import CATEGORIES
from extproc.workload.trace import TraceRequest

_ROUNDS_PER_WINDOW = 4
_MAX_WINDOWS = 32
_MIXED_PARTS = ("prose", "cjk")
_MIXED_SEGMENT = (64, 384)
Seed = int | np.random.Generator


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _decode(encoding: str, tokens: list[int]) -> str:
    # "ignore" drops the partial UTF-8 sequences a token slice can start or end with.
    return get_encoding(encoding).decode_bytes(tokens).decode("utf-8", errors="ignore")


def _window_text(category: str, length: int, rng: np.random.Generator, encoding: str) -> str:
    start = int(rng.integers(len(corpus_tokens(category, encoding))))
    return _decode(encoding, token_window(category, start, length, encoding))


def _mixed_text(length: int, rng: np.random.Generator, encoding: str) -> str:
    parts: list[str] = []
    remaining = length
    which = int(rng.integers(2))
    while remaining > 0:
        size = min(remaining, int(rng.integers(*_MIXED_SEGMENT)))
        parts.append(_window_text(_MIXED_PARTS[which], size, rng, encoding).strip())
        remaining -= size
        which ^= 1
    return "\n\n".join(parts)


def _producer(category: str, encoding: str, rng: np.random.Generator) -> Callable[[int], str]:
    if category == "mixed":
        return lambda length: _mixed_text(length, rng, encoding)
    if category not in CATEGORIES:
        raise ValueError(f"unknown prompt category {category!r}; known: {', '.join(CATEGORIES)}")
    return lambda length: _window_text(category, length, rng, encoding)


def _cut_exact(tokens: list[int], n: int, encoding: str) -> str | None:
    enc = get_encoding(encoding)
    k = n
    for _ in range(_ROUNDS_PER_WINDOW):
        text = _decode(encoding, tokens[:k])
        got = len(enc.encode(text))
        if got == n:
            return text
        k = min(len(tokens), max(1, k + n - got))
    return None


def prompt_text(category: str, n_tokens: int, seed: Seed = 0, encoding: str = DEFAULT_ENCODING) -> str:
    """Real text of ``category`` that encodes to exactly ``n_tokens`` tokens."""
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int | np.integer) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an integer >= 0, got {n_tokens!r}")
    rng = _rng(seed)
    produce = _producer(category, encoding, rng)
    if n_tokens == 0:
        return ""
    enc = get_encoding(encoding)
    n = int(n_tokens)
    for _ in range(_MAX_WINDOWS):
        text = produce(n + 8 + n // 32)
        tokens = enc.encode(text)
        while len(tokens) < n:
            text += produce(n - len(tokens) + 16)
            tokens = enc.encode(text)
        exact = _cut_exact(tokens, n, encoding)
        if exact is not None:
            return exact
    raise RuntimeError(f"could not cut a {category} prompt of exactly {n} tokens in {_MAX_WINDOWS} windows")


def count_tokens(text: str, encoding: str = DEFAULT_ENCODING) -> int:
    return len(get_encoding(encoding).encode(text))


def _common(model: str, max_tokens: int | None, stream: bool, include_usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if max_tokens is not None:
        body["max_tokens"] = int(max_tokens)
    if stream:
        body["stream"] = True
        if include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


def chat_body(
    category: str,
    prompt_tokens: int,
    *,
    model: str,
    max_tokens: int | None = None,
    seed: Seed = 0,
    system: str | None = None,
    stream: bool = False,
    include_usage: bool = False,
    encoding: str = DEFAULT_ENCODING,
) -> dict[str, Any]:
    """An OpenAI ``/v1/chat/completions`` body; the user message has exactly ``prompt_tokens`` tokens."""
    messages = [{"role": "system", "content": system}] if system is not None else []
    messages.append({"role": "user", "content": prompt_text(category, prompt_tokens, seed, encoding)})
    return {**_common(model, max_tokens, stream, include_usage), "messages": messages}


def completion_body(
    category: str,
    prompt_tokens: int,
    *,
    model: str,
    max_tokens: int | None = None,
    seed: Seed = 0,
    stream: bool = False,
    include_usage: bool = False,
    encoding: str = DEFAULT_ENCODING,
) -> dict[str, Any]:
    """An OpenAI ``/v1/completions`` body whose ``prompt`` has exactly ``prompt_tokens`` tokens."""
    return {
        **_common(model, max_tokens, stream, include_usage),
        "prompt": prompt_text(category, prompt_tokens, seed, encoding),
    }


def request_body(
    request: TraceRequest,
    *,
    model: str,
    seed: Seed,
    api: str = "chat",
    encoding: str = DEFAULT_ENCODING,
    **options: Any,
) -> dict[str, Any]:
    """The body for one trace request: its category's text at its prompt size, ``max_tokens`` set to
    its output size. ``api`` is ``chat`` or ``completions``; ``options`` go to that builder."""
    if request.category is None:
        raise ValueError("request has no category; assign one with a CategoryMix first")
    build = {"chat": chat_body, "completions": completion_body}.get(api)
    if build is None:
        raise ValueError(f"api must be 'chat' or 'completions', got {api!r}")
    return build(
        request.category,
        request.prompt_tokens,
        model=model,
        max_tokens=request.output_tokens,
        seed=seed,
        encoding=encoding,
        **options,
    )
