"""Content category detection: which bytes-per-token ratio applies to a piece of text.

Tokenizers pack English prose at ~4-5 bytes/token, code at ~3-4 and CJK at ~1-3 (3-byte UTF-8 code
points, often one or more tokens each). One global ratio therefore misjudges CJK prompts by ~2x, so
each category learns its own. Detection is one cheap pass of C-speed string methods over a bounded
prefix: it must cost microseconds, not a tokenizer run.
"""

from __future__ import annotations

from dataclasses import dataclass

PROSE, CODE, CJK, MIXED, STRUCTURED = "prose", "code", "cjk", "mixed", "structured"

# UTF-8 lead bytes 0xE3-0xED start the code points U+3000-U+DFFF: CJK punctuation, kana, Han and
# Hangul (plus a few rarer scripts, which tokenise alike). Counting them via bytes.translate is a C
# loop, an order of magnitude cheaper than a regex over the string.
_NOT_CJK_LEAD = bytes(b for b in range(256) if not 0xE3 <= b <= 0xED)
_NOT_CODE_CHAR = bytes(b for b in range(256) if chr(b) not in "{}();=<>[]_#$\\|&*")
# Each str.count of a multi-character needle costs ~2-3 µs on 4 KB, so the signal is code
# punctuation density (one bytes.translate) plus indentation, the two cheapest strong cues.
_SAMPLE_CHARS = 4096


@dataclass(frozen=True, slots=True)
class CategoryParams:
    enabled: tuple[str, ...] = (PROSE, CODE, CJK, MIXED, STRUCTURED)
    default: str = PROSE
    cjk_share: float = 0.3
    mixed_share: float = 0.05
    code_score: float = 0.065


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
        if "```" in sample:
            return self._allowed(CODE)
        punct = len(raw.translate(None, _NOT_CODE_CHAR))
        indent = sample.count("\n    ")
        score = (punct + 3 * indent) / len(sample)
        return self._allowed(CODE if score >= p.code_score else PROSE)
