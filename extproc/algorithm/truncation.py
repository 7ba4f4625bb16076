"""Truncation by the context: which answers a pool cut short, and which answers must be read to know.

vLLM 0.32 no longer refuses a request whose prompt fits the context but whose prompt + ``max_tokens``
does not: it answers 200 and stops the output at the end of the context (``finish_reason:
"length"``). Envoy's net never sees such an answer, so the router must tell it from the answer's own
``usage``: a sequence that reached the context while it was allowed more output was cut by the pool,
and on the short pool that is a cost of routing (the long pool would have let it finish).

The answer alone says it: for one sequence (one prompt, ``n`` = 1), ``prompt_tokens +
completion_tokens`` reaches the context while ``completion_tokens`` is below the request's limit.
A ``"length"`` finish below the limit says the same where the router's idea of the context is off
(the engine has no other reason to stop there). With several sequences (``n`` completions, a batch of
prompts) ``usage`` sums them: every sequence may have its full limit, so none can have been cut when
the largest prompt plus the limit fits; otherwise a ``"length"`` finish marks the cut (of one prompt's
``n`` sequences exactly: each is clamped to the room left, below its limit; in a batch of prompts it
may belong to a shorter prompt that did fit, so a batch may be counted that was not cut, never the
reverse), and without finish reasons a completion total no set of uncut sequences reaches (more than
``n`` times the room left minus one) does.

Reading answers costs router CPU, so once a category has converged only a sample is read. The
answers that may have been cut are exactly the ones the estimator needs, so every short-pool answer
near the boundary is read whatever the sampling says: its prompt, were it ``NEAR_FACTOR`` times the
estimate, would not fit the short context with its output reserve. Under-estimates of real text stay
well inside a factor of 2 (the v2 margin targets 0.3 %); a prompt even further off does not fit at all
and comes back as a 400, which is always read.
"""

from __future__ import annotations

NEAR_FACTOR = 2.0


def near_context(prompt_estimate: int, output_reserve: int, context: int) -> bool:
    """Whether an answer on a pool of ``context`` tokens may have been cut: the request would not fit
    were its prompt ``NEAR_FACTOR`` times the estimate."""
    return prompt_estimate * NEAR_FACTOR + output_reserve > context


def context_truncated(
    prompt_tokens: int,
    completion_tokens: int,
    context: int,
    limit: int | None,
    sequences: int = 1,
    longest_prompt: int | None = None,
    length_stop: bool = False,
) -> bool:
    """Whether the engine cut an answer at the end of its ``context``.

    ``prompt_tokens`` and ``completion_tokens`` are the answer's ``usage``; ``limit`` the output each
    sequence was allowed (None: the rest of the context, as vLLM gives a request without one);
    ``sequences`` how many sequences ``usage`` sums (prompts x ``n``); ``longest_prompt`` the largest
    prompt of a batch of several prompts (None: one prompt, whose size is ``prompt_tokens``);
    ``length_stop`` whether some sequence finished with ``"length"``.
    """
    if prompt_tokens < 0 or completion_tokens < 0 or sequences < 1:
        return False
    if sequences == 1 and longest_prompt is None:
        if limit is not None and completion_tokens >= limit:
            return False  # it got all it asked for
        return prompt_tokens + completion_tokens >= context or length_stop
    prompt = prompt_tokens if longest_prompt is None else longest_prompt
    room = context - prompt
    if limit is not None and room >= limit:
        return False  # every sequence could reach its limit inside the context
    if limit is not None and completion_tokens >= sequences * limit:
        return False
    if length_stop:
        return True
    return longest_prompt is None and room > 0 and completion_tokens > sequences * (room - 1)
