"""Character-class counts of a prompt: the regressors of the v2 token estimator.

Within one content category bytes/token still varies ±15-20 % with the kind of text (HTML against
prose, shell against Python, Chinese against Japanese), because BPE tokens follow words, digit groups,
punctuation and multi-byte characters rather than bytes. Counting those classes lets a linear model
absorb that variation instead of one ratio.

Byte classes cannot see how *common* a character is, and that is what a vocabulary rewards: frequent
characters are whole tokens, rare ones split into two or three byte pieces. cl100k holds simplified
Chinese at ~3.0 bytes/token but traditional Chinese at ~2.5, and German (ä, ß) and Russian differ
the same way. GB 2312 is a fixed list of frequent characters (6,763 Han characters, kana, Greek,
Cyrillic, CJK punctuation; 99.7 % of mainland Chinese usage) that CPython encodes in C, so "non-ASCII
characters GB 2312 lacks" counts rare and traditional Han, accented Latin and emoji in one pass.
Hangul lies outside it although vocabularies hold it well, so it is counted on its own (lead bytes
EA-ED). On the corpus's CJK requests the two counts halve cl100k's mean relative error (4.6 % → 2.3 %).

Cost is what shapes this module: the counts must take microseconds on a 4 KB body. One
``bytes.translate`` maps every byte to its class letter, and a handful of ``bytes.count`` calls count
the classes (no regex, no per-character Python loop). Pure-ASCII text (``str.isascii`` is O(1)) skips
the multi-byte counts. Texts longer than ``sample_bytes`` are counted on evenly spaced chunks and the
counts scaled to the whole text, so the cost is bounded however long the prompt is (the sample is
shared by a request's texts, so many turns do not multiply it).
"""

from __future__ import annotations

from collections.abc import Sequence

# Feature vector layout (indices into the tuple ``text_features`` returns).
BYTES, LETTERS, DIGITS, SPACES, NEWLINES, PUNCT, WORDS, TWO_BYTE, THREE_BYTE, FOUR_BYTE, UNCOMMON, HANGUL = range(12)
TEXT_FEATURES = (
    "bytes",
    "letters",
    "digits",
    "spaces",
    "newlines",
    "punct",
    "words",
    "two_byte",
    "three_byte",
    "four_byte",
    "uncommon",
    "hangul",
)
N_TEXT = len(TEXT_FEATURES)
DEFAULT_SAMPLE_BYTES = 32768
_CHUNKS = 8  # evenly spaced chunks when sampling: heterogeneous prompts (prose with pasted code) stay visible
_MIN_SAMPLE = 256  # per text, however small its share of the sample


def _class_table() -> bytes:
    """Byte -> class letter: a letter, 0 digit, space (and tab), newline, . punctuation/other ASCII,
    c UTF-8 continuation, 2/3/4 lead byte of a 2/3/4-byte sequence, g lead byte of U+A000-U+DFFF
    (Hangul syllables, three bytes)."""
    table = bytearray(b"." * 256)
    for b in range(256):
        ch = chr(b)
        if b < 128 and ch.isalpha():
            table[b] = ord("a")
        elif b < 128 and ch.isdigit():
            table[b] = ord("0")
        elif ch in " \t":
            table[b] = ord(" ")
        elif ch in "\n\r":
            table[b] = ord("\n")
        elif 0x80 <= b < 0xC0:
            table[b] = ord("c")
        elif 0xC0 <= b < 0xE0:
            table[b] = ord("2")
        elif 0xEA <= b <= 0xED:
            table[b] = ord("g")
        elif 0xE0 <= b < 0xF0:
            table[b] = ord("3")
        elif b >= 0xF0:
            table[b] = ord("4")
    return bytes(table)


_CLASSES = _class_table()


def _boundary(raw: bytes, i: int) -> int:
    """``i`` moved forward to the start of a character (past at most three continuation bytes)."""
    while i < len(raw) and 0x80 <= raw[i] < 0xC0:
        i += 1
    return i


def _sample(raw: bytes, limit: int) -> bytes:
    """Evenly spaced chunks cut at character boundaries, so the class counts still add up to the bytes."""
    if len(raw) <= limit:
        return raw
    size = limit // _CHUNKS
    step = (len(raw) - size) // (_CHUNKS - 1)
    return b"".join(raw[_boundary(raw, i * step) : _boundary(raw, i * step + size)] for i in range(_CHUNKS))


def count_classes(raw: bytes, text: str | None = None) -> list[float]:
    """Class counts of ``raw`` (all of it), in ``TEXT_FEATURES`` order; ``text`` is ``raw`` decoded,
    given only when it holds non-ASCII (ASCII text has no multi-byte or uncommon characters).

    Words are counted by their most common start, a letter after a space, which is where BPE
    pre-tokenisers split. Number runs were measured too and dropped: the digit count carries the
    same information here (``benchmarks/accuracy.py`` unchanged without them) and each two-byte
    pattern count costs as much as three single-byte ones. Multi-byte sequences are counted by their
    lead bytes.
    """
    m = raw.translate(_CLASSES)
    digits = m.count(b"0")
    spaces = m.count(b" ")
    newlines = m.count(b"\n")
    punct = m.count(b".")
    words = m.count(b" a")
    if text is None:
        two = three = four = uncommon = hangul = 0
        letters = len(m) - digits - spaces - newlines - punct
    else:
        hangul = m.count(b"g")
        two, three, four = m.count(b"2"), m.count(b"3") + hangul, m.count(b"4")
        letters = m.count(b"a")
        ascii_bytes = letters + digits + spaces + newlines + punct
        common = (len(text.encode("gb2312", "ignore")) - ascii_bytes) // 2  # GB 2312: two bytes per non-ASCII
        uncommon = max(0, two + three + four - common)
    return [
        float(len(raw)),
        float(letters),
        float(digits),
        float(spaces),
        float(newlines),
        float(punct),
        float(words),
        float(two),
        float(three),
        float(four),
        float(uncommon),
        float(hangul),
    ]


def text_features(texts: Sequence[str], sample_bytes: int = DEFAULT_SAMPLE_BYTES) -> tuple[float, ...]:
    """Summed class counts of ``texts`` (the prompt's message texts), estimated from at most
    ``sample_bytes`` bytes in all (shared by the texts in proportion to their sizes) and scaled to
    each text's full size. Never raises on any ``str``: lone surrogates are encoded as-is."""
    total = [0.0] * N_TEXT
    encoded = [
        (t.encode("ascii"), None) if t.isascii() else (t.encode("utf-8", "surrogatepass"), t) for t in texts if t
    ]
    size = sum(len(raw) for raw, _ in encoded)
    for raw, text in encoded:
        part = _sample(raw, max(_MIN_SAMPLE, sample_bytes * len(raw) // size))
        if text is not None and part is not raw:
            text = part.decode("utf-8", "surrogatepass")
        counts = count_classes(part, text)
        scale = len(raw) / len(part)
        for i, value in enumerate(counts):
            total[i] += value * scale
    return tuple(total)
