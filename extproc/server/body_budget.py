"""The bytes of bodies all exchanges of one router hold at once, bounded.

A request's parsed body lives as long as its exchange (the shape references its texts until the
response teaches the estimator), and so does a buffered JSON response: forty concurrent 16 MB bodies
once held 1.3 GiB. Each exchange takes its bytes from one process-wide budget and gives them back
when it ends; what does not fit is not read (a request goes long, reason ``too_complex``, detail
``body_budget``; a response's usage is skipped) and is counted. One event loop runs every exchange,
so the counter needs no lock.
"""

from __future__ import annotations

BODY_BUDGET = "body_budget"  # the too_complex detail of a request refused for want of budget


class BodyBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.held = 0
        self.refused = 0  # takes that did not fit (requests routed long unread, responses not read)

    def take(self, nbytes: int) -> bool:
        """Hold ``nbytes`` more if they fit; False (and counted) if they do not."""
        if self.held + nbytes > self.limit_bytes:
            self.refused += 1
            return False
        self.held += nbytes
        return True

    def give(self, nbytes: int) -> None:
        self.held -= nbytes
