"""Content category detection: which bytes-per-token ratio applies to a piece of text.

Tokenizers pack English prose at ~4-5 bytes/token, code at ~3-4 and CJK at ~1-3 (3-byte UTF-8 code
points, often one or more tokens each). One global ratio therefore misjudges CJK prompts by ~2x, so
each category learns its own. Detection is one cheap pass of C-speed string methods over a bounded
prefix: it must cost microseconds, not a tokenizer run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PROSE, CODE, CJK, MIXED, STRUCTURED = "prose", "code", "cjk", "mixed", "structured"

# Han, Hiragana, Katakana, Hangul, CJK punctuation and full-width forms.
_CJK_RE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
_CODE_CHARS = "{}();=<>[]_#$\\|&*"
_CODE_WORDS = ("def ", "return", "import ", "function", "class ", "const ", "#include", "=>", "::", "){", "];")
_SAMPLE_CHARS = 16384


@dataclass(frozen=True, slots=True)
class CategoryParams:
    enabled: tuple[str, ...] = (PROSE, CODE, CJK, MIXED, STRUCTURED)
    default: str = PROSE
    cjk_share: float = 0.3
    mixed_share: float = 0.05
    code_score: float = 0.035


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
        sample = text if len(text) <= _SAMPLE_CHARS else text[: _SAMPLE_CHARS // 2] + text[-_SAMPLE_CHARS // 2 :]
        p = self.params
        if not sample.isascii():
            visible = max(1, len(sample) - sample.count(" ") - sample.count("\n"))
            share = len(_CJK_RE.findall(sample)) / visible
            if share >= p.cjk_share:
                return self._allowed(CJK)
            if share >= p.mixed_share:
                return self._allowed(MIXED)
        if "```" in sample:
            return self._allowed(CODE)
        punct = sum(sample.count(c) for c in _CODE_CHARS)
        words = sum(sample.count(w) for w in _CODE_WORDS)
        indent = sample.count("\n    ") + sample.count("\n\t")
        score = (punct + 4 * words + 2 * indent) / len(sample)
        return self._allowed(CODE if score >= p.code_score else PROSE)
