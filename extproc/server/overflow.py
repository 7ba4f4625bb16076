"""What a backend's context-length 400 says about the prompt: an exact token count, a lower bound, or
nothing the estimator can use.

vLLM has worded this error many ways across versions (the table of every wording, with where it
came from, is ``tests/unit/test_overflow.py``). Three kinds matter to the estimator:

* an **exact** count of prompt tokens: learned as an ordinary sample;
* a **lower bound** ("at least N input tokens", or the renderer's "You passed N input tokens" when
  N is one past the maximum input: it stops tokenizing there, so the prompt may be much longer):
  learned only as a bound, which may widen the safety margin but never narrow it;
* a count of input **characters** (the renderer's pre-tokenization check): says nothing about
  tokens, ignored.

Patterns are tried in order on the first 64 KiB of the body; the first that matches decides.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

_MAX_SCAN = 1 << 16


class Kind(enum.Enum):
    EXACT = "exact"
    LOWER_BOUND = "lower_bound"


@dataclass(frozen=True, slots=True)
class OverflowCount:
    prompt_tokens: int
    kind: Kind

    @property
    def exact(self) -> bool:
        return self.kind is Kind.EXACT


# The renderer's token check (vLLM >= 0.11): tokenization is capped at max_input + 1 tokens, so a
# count of exactly max_input + 1 is where tokenizing stopped, not where the prompt ends.
_RENDERER_TOKENS = re.compile(
    rb"You passed (\d+) input tokens and requested \d+ output tokens\. However, the model's context "
    rb"length is only \d+ tokens, resulting in a maximum input length of (\d+) tokens"
)
# v0.16: "You passed C input characters ..."; v0.18: "... your prompt contains C characters (more than ...".
_CHARACTERS = re.compile(rb"You passed \d+ input characters|your prompt contains \d+ characters")
_BOUND = re.compile(rb"at least (\d+) input tokens")
_EXACT = (
    # vLLM 0.4-0.9: "However, you requested T tokens (P in the messages, C in the completion)."
    re.compile(rb"\((\d+) in the messages, \d+ in the completion\)"),
    # vLLM 0.4-0.9 without max_tokens: "However, you requested P tokens in the messages, Please ..."
    re.compile(rb"you requested (\d+) tokens in the messages"),
    # vLLM 0.10+: "However, your request has P input tokens." and the max_tokens check
    # "... and your request has P input tokens (M > C - P)."
    re.compile(rb"your (?:request|prompt) has (\d+) input tokens"),
    # vLLM 0.18+ (vllm#36197): "... and your prompt contains N input tokens, for a total of T tokens." (its
    # lower bound says "contains at least N", matched above).
    re.compile(rb"your prompt contains (\d+) input tokens"),
    # v1 engine processor: "The decoder prompt (length P) is longer than the maximum model length of
    # C." and "... (length P) plus the number of requested output tokens (at least 1) is longer ...".
    re.compile(rb"prompt \(length (\d+)\)"),
    # "Requested token count exceeds ... : P tokens from the input messages and C tokens for the completion."
    re.compile(rb"(\d+) tokens from the input messages"),
    re.compile(rb"\((\d+) in the messages\)"),
)
_CONTEXT_WORDS = (b"context length", b"context_length", b"maximum model length")


def overflow_count(body: bytes) -> OverflowCount | None:
    """The prompt-token information in a context-length error body, or None if it has none."""
    head = body[:_MAX_SCAN]
    if not any(word in head for word in _CONTEXT_WORDS):
        return None
    if _CHARACTERS.search(head):
        return None
    m = _BOUND.search(head)
    if m:
        return OverflowCount(int(m.group(1)), Kind.LOWER_BOUND)
    m = _RENDERER_TOKENS.search(head)
    if m:
        passed, max_input = int(m.group(1)), int(m.group(2))
        return OverflowCount(passed, Kind.LOWER_BOUND if passed == max_input + 1 else Kind.EXACT)
    for pattern in _EXACT:
        m = pattern.search(head)
        if m:
            return OverflowCount(int(m.group(1)), Kind.EXACT)
    return None
