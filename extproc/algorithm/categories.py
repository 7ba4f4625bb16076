"""Content category detection: which bytes-per-token ratio applies to a piece of text.

Tokenizers pack English prose at ~4-5 bytes/token, code at ~3-4 and CJK at ~1-3 (3-byte UTF-8 code
points, often one or more tokens each). One global ratio therefore misjudges CJK prompts by ~2x, so
each category learns its own. Detection is one cheap pass of C-speed string methods over a bounded
prefix: it must cost microseconds, not a tokenizer run.
"""

from __future__ import annotations

from dataclasses import dataclass

PROSE, CODE, CJK, MIXED, STRUCTURED, ODD = "prose", "code", "cjk", "mixed", "structured", "odd"

# UTF-8 lead bytes 0xE3-0xED start the code points U+3000-U+DFFF: CJK punctuation, kana, Han and
# Hangul (plus a few rarer scripts, which tokenise alike). Counting them via bytes.translate is a C
# loop, an order of magnitude cheaper than a regex over the string.
_NOT_CJK_LEAD = bytes(b for b in range(256) if not 0xE3 <= b <= 0xED)
_NOT_CODE_CHAR = bytes(b for b in range(256) if chr(b) not in "{}();=<>[]_#$\\|&*")
# Odd text (random identifiers, base64, hex, digit runs, UUIDs) tokenises at 1.0-1.8 bytes/token where
# prose of the same letters packs 4-5: filed under prose it would be under-counted ~3x, and its samples
# would widen prose's margin for everyone. Its mark is cheap to see: ASCII upper-case letters and digits
# packed with almost no spaces (prose, code and CJK windows of the corpus stay under 0.33 of them, or
# have spaces; random alphanumerics hold 0.58, hex 0.63). One delete-translate counts them; spaces and
# digits are counted only when that share is high.
_NOT_UPPER_OR_DIGIT = bytes(b for b in range(256) if not (0x41 <= b <= 0x5A or 0x30 <= b <= 0x39))
_NOT_DIGIT = bytes(b for b in range(256) if not 0x30 <= b <= 0x39)
# Each str.count of a multi-character needle costs ~2-3 µs on 4 KB, so the signal is code
# punctuation density (one bytes.translate) plus indentation, the two cheapest strong cues.
_SAMPLE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class CategoryParams:
    enabled: tuple[str, ...] = (PROSE, CODE, CJK, MIXED, STRUCTURED, ODD)
    default: str = PROSE
    cjk_share: float = 0.3
    mixed_share: float = 0.05
    code_score: float = 0.065
    odd_share: float = 0.2  # share of upper-case letters and digits above which spaceless text is odd


ODD_MIN_BYTES = 64


def odd_text(raw: bytes, share: float) -> bool:
    """Whether ``raw`` (a sample of a prompt) is odd text: upper-case letters and digits make up at least
    ``share`` of it with spaces under 8 % (random identifiers, base64, hex, UUIDs, digit runs), or digits
    alone make up 40 % of it (numbers separated by spaces).

    Samples shorter than ``ODD_MIN_BYTES`` are never odd: a few characters ("1909 The A") cannot tell a
    year in prose from a digit run, and a prompt that short is far from any threshold whatever its ratio."""
    n = len(raw)
    if n < ODD_MIN_BYTES:
        return False
    dense = len(raw.translate(None, _NOT_UPPER_OR_DIGIT))
    if dense < share * n:
        return False
    if raw.count(b" ") + raw.count(b"\n") < 0.08 * n:
        return True
    return len(raw.translate(None, _NOT_DIGIT)) >= 0.4 * n


class Categorizer:
    """Maps text to a category name; names that are not enabled fall back to the default."""

    def __init__(self, params: CategoryParams | None = None) -> None:
        self.params = params or CategoryParams()
        self._enabled = frozenset(self.params.enabled)

    def _allowed(self, name: str) -> str:
        return name if name in self._enabled else self.params.default

    def structured(self) -> str:
        return self._allowed(STRUCTURED)

    def classify(self, text: str) -> str:
        if not text:
            return self.params.default
        half = _SAMPLE_CHARS // 2
        sample = text if len(text) <= _SAMPLE_CHARS else text[:half] + text[-half:]
        raw = sample.encode("utf-8", "surrogatepass")
        p = self.params
        if len(raw) != len(sample):  # not pure ASCII
            visible = max(1, len(sample) - sample.count(" ") - sample.count("\n"))
            share = len(raw.translate(None, _NOT_CJK_LEAD)) / visible
            if share >= p.cjk_share:
                return self._allowed(CJK)
            if share >= p.mixed_share:
                return self._allowed(MIXED)
        if odd_text(raw, p.odd_share):
            return self._allowed(ODD)
        if "```" in sample:
            return self._allowed(CODE)
        punct = len(raw.translate(None, _NOT_CODE_CHAR))
        indent = sample.count("\n    ")
        score = (punct + 3 * indent) / len(sample)
        return self._allowed(CODE if score >= p.code_score else PROSE)
