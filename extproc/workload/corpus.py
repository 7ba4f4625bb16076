"""The shipped real-text corpus (``extproc/data/corpus``, see its PROVENANCE.md), one concatenated text
per category, and its token array per BPE encoding. Token arrays are computed once per process so that
prompts of any size are cut from them by slicing instead of re-encoding the corpus."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import bpe_openai
import numpy as np

CORPUS_DIR = Path(__file__).resolve().parent.parent / "data" / "corpus"
TEXT_CATEGORIES = ("prose", "code", "cjk")
DEFAULT_ENCODING = "cl100k_base"
FILE_SEPARATOR = "\n\n"


@lru_cache(maxsize=4)
def get_encoding(name: str = DEFAULT_ENCODING) -> bpe_openai.Encoding:
    try:
        return bpe_openai.get_encoding(name)
    except Exception as exc:  # the library raises its own error types for unknown names
        raise ValueError(f"unknown BPE encoding {name!r}: {exc}") from None


@lru_cache(maxsize=8)
def corpus_text(category: str) -> str:
    """All files of a category, in name order, each followed by a blank line (so the text can wrap)."""
    if category not in TEXT_CATEGORIES:
        raise ValueError(f"no corpus for category {category!r}; corpus categories: {', '.join(TEXT_CATEGORIES)}")
    files = sorted(p for p in (CORPUS_DIR / category).glob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(
            f"corpus folder {CORPUS_DIR / category} is empty; run python -m extproc.workload.build_corpus"
        )
    return "".join(p.read_text(encoding="utf-8").strip("\n") + FILE_SEPARATOR for p in files)


@lru_cache(maxsize=16)
def corpus_tokens(category: str, encoding: str = DEFAULT_ENCODING) -> np.ndarray:
    tokens = np.asarray(get_encoding(encoding).encode(corpus_text(category)), dtype=np.int64)
    tokens.setflags(write=False)
    return tokens


def token_window(category: str, start: int, length: int, encoding: str = DEFAULT_ENCODING) -> list[int]:
    """``length`` corpus tokens from ``start``, wrapping around the end of the corpus."""
    tokens = corpus_tokens(category, encoding)
    return tokens.take(np.arange(start, start + length), mode="wrap").tolist()
