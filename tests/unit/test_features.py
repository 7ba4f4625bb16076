"""Character-class features: exact counts on known text, sampled counts that scale, and a property
test that the extractor never raises and its counts add up to the bytes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.algorithm.features import (
    BYTES,
    DIGITS,
    FOUR_BYTE,
    HANGUL,
    LETTERS,
    NEWLINES,
    PUNCT,
    SPACES,
    THREE_BYTE,
    TWO_BYTE,
    UNCOMMON,
    WORDS,
    text_features,
)

ASCII_CLASSES = (LETTERS, DIGITS, SPACES, NEWLINES, PUNCT)


def _byte_sum(f: tuple[float, ...]) -> float:
    return sum(f[i] for i in ASCII_CLASSES) + 2 * f[TWO_BYTE] + 3 * f[THREE_BYTE] + 4 * f[FOUR_BYTE]


def test_ascii_counts():
    f = text_features(["Hello world 42!\n"])
    assert f[BYTES] == 16 and f[LETTERS] == 10 and f[DIGITS] == 2 and f[SPACES] == 2
    assert f[NEWLINES] == 1 and f[PUNCT] == 1 and f[WORDS] == 1
    assert f[TWO_BYTE] == f[THREE_BYTE] == f[FOUR_BYTE] == 0


def test_multibyte_sequences_are_counted_by_their_lead_bytes():
    f = text_features(["日本語 é 😀"])
    assert (f[THREE_BYTE], f[TWO_BYTE], f[FOUR_BYTE], f[SPACES]) == (3, 1, 1, 2)
    assert f[BYTES] == len("日本語 é 😀".encode()) == _byte_sum(f)


def test_uncommon_characters_are_those_gb2312_lacks_and_hangul_is_counted_apart():
    # simplified 语 and 本, kana, Cyrillic and pinyin é are in GB 2312; traditional 語 and 體, German ä,
    # emoji and Hangul are not
    f = text_features(["语本かж é", "語體ä😀", "한국어"])
    assert f[UNCOMMON] == 7 and f[HANGUL] == 3
    assert text_features(["plain ASCII text"])[UNCOMMON] == 0


def test_traditional_chinese_counts_as_uncommon_where_simplified_does_not():
    simplified, traditional = "这是一个关于语言模型的问题。", "這是一個關於語言模型的問題。"
    assert text_features([simplified])[UNCOMMON] == 0
    assert text_features([traditional])[UNCOMMON] == 6  # 這 個 關 語 問 題; the rest are shared


def test_texts_are_summed_and_empty_ones_cost_nothing():
    one = text_features(["abc def"])
    assert text_features(["abc def", "", "abc def"]) == tuple(2 * v for v in one)
    assert text_features([]) == text_features([""]) == (0.0,) * len(one)


def test_long_texts_are_sampled_and_scaled_to_their_size():
    text = "The quick brown fox, 12 jumps.\n" * 2000  # 62 KB, far over the sample
    exact = text_features([text], sample_bytes=1 << 20)
    sampled = text_features([text], sample_bytes=4096)
    assert sampled[BYTES] == exact[BYTES] == len(text)
    for i in (LETTERS, SPACES, WORDS, DIGITS):
        assert abs(sampled[i] - exact[i]) <= 0.02 * exact[i]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), max_size=4))
def test_never_raises_and_counts_add_up(texts):
    f = text_features(texts)
    total = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
    assert f[BYTES] == total
    assert abs(_byte_sum(f) - total) < 1e-6
    assert all(v >= 0 for v in f)
    assert f[WORDS] <= f[LETTERS]
    assert f[UNCOMMON] <= f[TWO_BYTE] + f[THREE_BYTE] + f[FOUR_BYTE] and f[HANGUL] <= f[THREE_BYTE]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1), st.integers(min_value=64, max_value=512))
def test_sampled_counts_still_add_up(text, sample):
    f = text_features([text * 50], sample_bytes=sample)
    assert abs(_byte_sum(f) - f[BYTES]) <= 1e-6 * f[BYTES]  # chunks are cut at character boundaries
