"""Deterministic output text: the same seed and request always produce the same words.

Every word is a single token in the configured BPE both with and without a leading space, so the
output's own token count equals ``usage.completion_tokens`` and each SSE chunk carries one token.
"""

from __future__ import annotations

import hashlib
import random

from extproc.emulator.tokens import TokenCounter

_WORDS = """
the of and to in is that for it as was with be by on not he this are or his from at which but
have an they you were her she there one all we their can has more will would been when who if
its about into than them only other some time new these two may first then do any like my now
over such our man me even most made after also did many before must through back years where
much your way well down should because each just those people how too little state good very
make world still own see men work long get here between both life being under never day same
another know while last might us great old year off come since against go came right used take
three place small found part again around however home light water number house system program
data model token short long pool route budget request answer server cache memory queue batch
"""
CANDIDATES = _WORDS.split()


def request_digest(seed: int, kind: str, raw_body: bytes, index: int = 0) -> bytes:
    """Identity of one request for ids and text: seed, endpoint, exact body, prompt index."""
    h = hashlib.sha256(f"{seed}:{kind}:{index}:".encode())
    h.update(raw_body)
    return h.digest()


class TextSource:
    def __init__(self, counter: TokenCounter) -> None:
        self.words = [w for w in CANDIDATES if counter.is_single_token(w) and counter.is_single_token(" " + w)]
        if len(self.words) < 16:
            raise RuntimeError(f"too few single-token words for {counter.encoding_name}")

    def tokens(self, digest: bytes, n: int) -> list[str]:
        """``n`` token strings: the first without a leading space, the rest with one."""
        picks = random.Random(digest).choices(self.words, k=n)
        return [w if i == 0 else " " + w for i, w in enumerate(picks)]
