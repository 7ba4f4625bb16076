"""Pool choice from a total token budget: capacity first, then the threshold, then spillover.

Every decision carries a reason so operators can see *why* traffic went where it did. A request too
large even for the long pool still goes long: the backend's own 400 is the clearest answer the
client can get, and it is counted (``over_long_context``).

A request that sets no output limit gets the rest of the pool's context from vLLM: routed short,
its answer may only run to the end of the short context. ``no_output_limit`` says what to do with
it: ``reserve`` routes it by its prompt plus the default output reserve (short when that fits, so a
client that omits max_tokens may get a shorter maximum answer there), ``long`` always sends it to
the long pool (reason ``no_output_limit``), where it may generate up to the long context.
"""

from __future__ import annotations

from dataclasses import dataclass

SHORT, LONG = "short", "long"

# Reasons (metric label values).
THRESHOLD = "threshold"  # L_total compared with B_short
CAPACITY = "capacity"  # L_total above the short pool's context
OVER_LONG_CONTEXT = "over_long_context"  # L_total above the long pool's context too
SPILLOVER = "spillover"  # short pool over pressure, request fits the long pool
NO_OUTPUT_LIMIT = "no_output_limit"  # the request sets no output limit and policy sends those long
UNPARSEABLE = "unparseable"  # the caller could not read the request: the safe (long) route
NO_BODY = "no_body"  # a request without a body (nothing to estimate): the safe route
TOO_COMPLEX = "too_complex"  # reading the body would cost more than a request's budget: the safe route, unread

RESERVE = "reserve"  # no_output_limit policies: route by the default reserve, or always long
NO_OUTPUT_LIMIT_POLICIES = (RESERVE, LONG)


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    b_short: int = 8192
    short_context: int = 8192
    long_context: int = 65536
    spillover: bool = True
    spill_threshold: float = 1.0
    no_output_limit: str = RESERVE


@dataclass(frozen=True, slots=True)
class Decision:
    pool: str
    reason: str

    @property
    def spilled(self) -> bool:
        return self.reason == SPILLOVER


def decide(
    total_tokens: int,
    policy: DispatchPolicy,
    short_pressure: float = 0.0,
    long_pressure: float = 0.0,
    output_defaulted: bool = False,
) -> Decision:
    """Spillover needs the short pool at its threshold *and* the long pool less loaded than the short
    one: moving work onto a pool that is even fuller only trades a short queue for a longer one.
    ``output_defaulted``: the request set no output limit (the total holds the default reserve)."""
    if total_tokens > policy.short_context:
        reason = OVER_LONG_CONTEXT if total_tokens > policy.long_context else CAPACITY
        return Decision(LONG, reason)
    if output_defaulted and policy.no_output_limit == LONG:
        return Decision(LONG, NO_OUTPUT_LIMIT)
    if total_tokens > policy.b_short:
        return Decision(LONG, THRESHOLD)
    if (
        policy.spillover
        and short_pressure >= policy.spill_threshold
        and long_pressure < short_pressure
        and total_tokens <= policy.long_context
    ):
        return Decision(LONG, SPILLOVER)
    return Decision(SHORT, THRESHOLD)
