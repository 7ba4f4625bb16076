"""Waiting on observable state, the one way tests synchronise with processes and event loops.

A sleep is a guess at how long something takes; on a loaded 2-core CI machine every guess is wrong
sometimes. These helpers poll what the test can observe (a counter, a log line, a health status)
until it holds, and on timeout raise with the last value they saw, so a failure says what the
system was doing instead of "condition not reached". Deadlines are generous on purpose: they only
bound a broken run, they never decide a passing one.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

INTERVAL_S = 0.02


class WaitTimeout(AssertionError):
    """The awaited state never came; ``last`` is what was observed last."""

    def __init__(self, what: str, timeout_s: float, last: Any) -> None:
        super().__init__(f"timed out after {timeout_s:g}s waiting for {what}; last seen: {last!r}")
        self.last = last


def _holds(ok: Callable[[T], bool] | None, value: T) -> bool:
    return bool(value) if ok is None else ok(value)


def until(
    probe: Callable[[], T],
    what: str,
    ok: Callable[[T], bool] | None = None,
    timeout_s: float = 10.0,
    interval_s: float = INTERVAL_S,
) -> T:
    """Poll ``probe()`` until ``ok(value)`` (or the value is truthy); returns that value.

    A probe that raises counts as "not yet" (a file half written, a port not yet open) and its
    error is what the timeout reports."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            value = probe()
            if _holds(ok, value):
                return value
            last = value
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise WaitTimeout(what, timeout_s, last)
        time.sleep(interval_s)


async def until_async(
    probe: Callable[[], T | Awaitable[T]],
    what: str,
    ok: Callable[[T], bool] | None = None,
    timeout_s: float = 10.0,
    interval_s: float = INTERVAL_S,
) -> T:
    """``until`` for a running event loop: the probe may be a plain function or a coroutine
    function, and the loop keeps running between polls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    last: Any = None
    while True:
        try:
            value = probe()
            if inspect.isawaitable(value):
                value = await asyncio.wait_for(value, max(0.1, deadline - loop.time()))
            if _holds(ok, value):  # type: ignore[arg-type]
                return value  # type: ignore[return-value]
            last = value
        except (Exception, TimeoutError) as exc:
            last = exc
        if loop.time() > deadline:
            raise WaitTimeout(what, timeout_s, last)
        await asyncio.sleep(interval_s)
