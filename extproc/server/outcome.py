"""What the router needs from a response, decided from its headers alone.

The response headers are one small message, so the router always asks for them (even for an exchange
it does not sample) and reads the status; the body is read only when it can teach something:
* a sampled success (usage in the JSON body or the SSE stream's usage chunk);
* every error from the short pool (a context-length 400 is the sample the estimator needs most);
* an answer the long pool gave to a request the net retried there (Envoy's route adds the attempt
  count as a response header): its usage is the exact prompt size of a request the estimate sent to
  the wrong pool. A streamed one is only readable when it carries the usage chunk.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from extproc.algorithm.dispatch import LONG, SHORT
from extproc.gateway.envoy_config import ATTEMPT_COUNT_HEADER


class Read(enum.Enum):
    NOTHING = "nothing"
    JSON = "json"  # keep the body BUFFERED
    SSE = "sse"  # switch to STREAMED and scan for the usage chunk


@dataclass(frozen=True, slots=True)
class ResponseView:
    status: int
    attempts: int
    sse: bool

    @property
    def retried(self) -> bool:
        return self.attempts > 1


def response_view(headers: Mapping[str, str]) -> ResponseView:
    """Status, attempt count (1 when Envoy sent none or an odd value) and SSE-ness of a response."""
    try:
        status = int(headers.get(":status", "0"))
    except ValueError:
        status = 0
    raw = headers.get(ATTEMPT_COUNT_HEADER, "1")
    attempts = int(raw) if raw.isascii() and raw.isdigit() and 0 < int(raw) < 100 else 1
    return ResponseView(status, attempts, headers.get("content-type", "").startswith("text/event-stream"))


def served_pool(routed: str, view: ResponseView) -> str:
    """The pool whose answer this is: the net sends every retry of a short request to the long pool."""
    return LONG if routed == SHORT and view.retried else routed


def what_to_read(view: ResponseView, routed: str, sampled: bool, usage_in_stream: bool, parsed: bool) -> Read:
    """``parsed``: the request was understood (there is a shape to learn for); ``usage_in_stream``: an
    SSE answer will end with the usage chunk (the client asked, or the router injected it)."""
    if not parsed:
        return Read.NOTHING
    error = view.status >= 400
    if view.sse:
        return Read.SSE if usage_in_stream and (sampled or view.retried) and not error else Read.NOTHING
    if sampled or view.retried or (error and served_pool(routed, view) == SHORT) or view.status == 400:
        return Read.JSON
    return Read.NOTHING
