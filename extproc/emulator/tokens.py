"""Exact BPE token counts for prompts of any size.

``bpe_openai`` refuses a single call on text of 1M characters or more, or producing more than 200K
tokens. A real server must count a 1 MB prompt anyway, so long text is cut into windows at places
where the pre-tokenizer of cl100k/o200k is guaranteed to split on its own (a space before a letter
that follows a non-space, or a letter/digit right after a line break). BPE never merges across
pre-token boundaries, so the sum of the windows' counts equals the count of the whole text.
Only text with no such place in a whole window (e.g. tens of thousands of CJK characters with no
line break) is cut blindly, which can move the count by a token per cut.

The Llama-3 and Qwen3 vocabularies come from ``quicktok-v1`` (the ``emulator`` extra), which counts
text of any size in one call, so no windows are needed there.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import bpe_openai

OPENAI_ENCODINGS = ("cl100k_base", "o200k_base")  # from bpe_openai (a core dependency)
QUICKTOK_ENCODINGS = ("llama3", "qwen3")  # from quicktok-v1 (the emulator extra)
ENCODINGS = OPENAI_ENCODINGS + QUICKTOK_ENCODINGS

# One character is at most 4 UTF-8 bytes and so at most 4 tokens: 40K chars stay under 200K tokens.
WINDOW_CHARS = 40_000
# How far back from a window's end to look for a safe cut before giving up and cutting blindly.
SEARCH_CHARS = 8_000


def _safe_cut(text: str, lo: int, hi: int) -> int:
    """Index in (lo, hi] where a pre-token boundary is certain, else ``hi``."""
    floor = max(lo + 1, hi - SEARCH_CHARS)
    i = text.rfind(" ", floor, hi + 1)
    while i >= floor:
        nxt = i + 1
        if nxt < len(text) and text[nxt].isalpha() and not text[i - 1].isspace():
            return i
        i = text.rfind(" ", floor, i)
    j = hi
    while j >= floor:
        if text[j - 1] in "\r\n" and j < len(text) and text[j].isalnum():
            return j
        k = max(text.rfind("\n", floor - 1, j - 1), text.rfind("\r", floor - 1, j - 1))
        if k < 0:
            break
        j = k + 1
    return hi


def windows(text: str, size: int = WINDOW_CHARS) -> list[str]:
    """Split ``text`` into pieces of at most ``size`` chars at pre-token boundaries where possible."""
    if len(text) <= size:
        return [text]
    pieces: list[str] = []
    start = 0
    while len(text) - start > size:
        cut = _safe_cut(text, start, start + size)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


class TokenCounter:
    """Counts tokens with one BPE encoding and remembers recent texts (system prompts repeat)."""

    def __init__(self, encoding: str = "cl100k_base", cache_chars: int = 32 * 1024 * 1024) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}")
        self.encoding_name = encoding
        self._enc = _load(encoding)
        self._ordinary: Callable[[str], list[int]] = self._enc.encode_ordinary
        self._windowed = encoding in OPENAI_ENCODINGS
        self.vocab_size: int = self._enc.max_token_value + 1
        self._cache: OrderedDict[str, int] = OrderedDict()
        self._cache_chars = 0
        self._cache_limit = cache_chars

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (special-token strings are ordinary text, as in a chat message)."""
        if not self._windowed:
            return list(self._ordinary(text))
        out: list[int] = []
        for piece in windows(text):
            out.extend(self._ordinary(piece))
        return out

    def count(self, text: str) -> int:
        if not text:
            return 0
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        pieces = windows(text) if self._windowed else (text,)
        n = sum(len(self._ordinary(piece)) for piece in pieces)
        self._remember(text, n)
        return n

    def is_single_token(self, text: str) -> bool:
        return len(self._ordinary(text)) == 1

    def _remember(self, text: str, n: int) -> None:
        if len(text) > self._cache_limit // 4:
            return
        self._cache[text] = n
        self._cache_chars += len(text)
        while self._cache_chars > self._cache_limit:
            old, _ = self._cache.popitem(last=False)
            self._cache_chars -= len(old)

    def check_ids(self, ids: Sequence[int]) -> int | None:
        """The first id outside the vocabulary, or None when all are valid."""
        for tok in ids:
            if tok < 0 or tok >= self.vocab_size:
                return tok
        return None


def _quicktok(encoding: str) -> Any:
    try:
        import quicktok
    except ImportError:
        raise ValueError(
            f"encoding {encoding!r} needs quicktok-v1: pip install 'budget-router[emulator]' "
            f"(or choose one of {', '.join(OPENAI_ENCODINGS)})"
        ) from None
    return quicktok


def check_available(encoding: str) -> None:
    """Fail at startup, with the install hint, when an encoding's vocabulary is not installed."""
    if encoding in QUICKTOK_ENCODINGS:
        _quicktok(encoding)


def _load(encoding: str) -> Any:
    if encoding in OPENAI_ENCODINGS:
        return bpe_openai.get_encoding(encoding)
    return _quicktok(encoding).get_encoding(encoding)
