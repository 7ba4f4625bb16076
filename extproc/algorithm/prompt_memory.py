"""What the engines said about one prompt, remembered for that prompt only: exact counts and floors.

A category's fit describes the texts it has seen. A prompt unlike them (random identifiers the odd
detector missed, a pasted blob, a language the features do not see) can be under-estimated badly,
and the engine then tells the router its real size: the long pool's ``usage`` after Envoy's net
resent it, the ``usage`` of an answer the short context cut, or at least a floor from a context-length
400 ("at least L+1 input tokens"). Clients resend the same prompt (retries, regenerations, agents
looping over one context), so the fact is worth most for *that* prompt: remembered here, the next
copy is routed by what the engine counted. Taken as a category-wide sample instead, a few such
prompts would wreck the category (one odd prompt's floor widened prose's margin for every request).

The memory is bounded (least recently used entries go first) and keyed by what the engine tokenises
(model, endpoint, message count, images, the texts and the structured size), via Python's string
hash (SipHash, cached on each string): the key costs one pass over the texts. It is only looked up
when it can change a decision: for a request routed short whose estimate is at least half the
smallest estimate any remembered prompt had, so the many small requests never pay for it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from extproc.algorithm.request_shape import RequestShape


@dataclass(frozen=True, slots=True)
class Remembered:
    tokens: int  # prompt tokens the engine counted (exact), or at least this many (a floor)
    exact: bool


def prompt_key(shape: RequestShape) -> int:
    """A key for the prompt as the engine sees it (its tokens do not depend on the output limit)."""
    return hash(
        (
            shape.model,
            shape.endpoint,
            shape.messages,
            shape.images,
            shape.tool_items,
            shape.structured_bytes,
            shape.texts,
        )
    )


class PromptMemory:
    """Exact prompt counts and floors per prompt, at most ``capacity`` of them (least recently used out)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, Remembered] = OrderedDict()
        # The smallest routed estimate of a remembered prompt: lookups below half of it cannot match
        # (the same prompt is estimated alike each time: the fit moves slowly). Never raised on
        # eviction, which only costs lookups, never a miss.
        self._smallest_estimate = float("inf")

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, shape: RequestShape) -> bool:
        return prompt_key(shape) in self._entries

    def worth_looking(self, estimated_prompt: int) -> bool:
        return bool(self._entries) and estimated_prompt >= 0.5 * self._smallest_estimate

    def lookup(self, shape: RequestShape) -> Remembered | None:
        key = prompt_key(shape)
        found = self._entries.get(key)
        if found is not None:
            self._entries.move_to_end(key)
        return found

    def remember(self, shape: RequestShape, tokens: int, exact: bool, estimated_prompt: int) -> Remembered | None:
        """Store what the engine said; an exact count replaces a floor, a floor only raises a floor and
        never replaces an exact count. Returns the entry kept (None when the memory holds nothing)."""
        if self.capacity <= 0 or tokens <= 0:
            return None
        key = prompt_key(shape)
        old = self._entries.get(key)
        if old is not None and not exact and (old.exact or old.tokens >= tokens):
            new = old
        else:
            new = Remembered(tokens, exact)
        self._entries[key] = new
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
        self._smallest_estimate = min(self._smallest_estimate, max(1, estimated_prompt))
        return new
