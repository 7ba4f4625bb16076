"""What a response's headers say, and so how much of it the exchange reads.

The response headers are one small message, so the exchange always asks for them (even for an
exchange the router does not sample): they carry the status and, on the short route, the attempt
count Envoy's net adds (2: the short pool failed the request and the long pool answered the retry).
Whether the answer can teach anything is the router's policy (``BudgetRouter.wants``); this module
only turns that answer into how the body is read: buffered JSON, a scanned SSE stream, or nothing.
A streamed answer is only readable when it carries the usage chunk, and a streamed error has nothing
to read.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from extproc.algorithm.dispatch import LONG, SHORT
from extproc.envoy_names import ATTEMPT_COUNT_HEADER


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


def what_to_read(view: ResponseView, wanted: bool, usage_in_stream: bool) -> Read:
    """``wanted``: the router wants this response's outcome; ``usage_in_stream``: an SSE answer will
    end with the usage chunk (the client asked, or the router injected it)."""
    if not wanted:
        return Read.NOTHING
    if view.sse:
        return Read.SSE if usage_in_stream and view.status < 400 else Read.NOTHING
    return Read.JSON
