"""Open-loop load through Envoy while a fault is acted out: what each request cost its client.

A fault's price is a latency distribution and a failure count seen from the client, not the state of
a process. Arrivals are on a fixed schedule (open loop: a stalled request does not hold the next one
back, as with real clients), each request carries its own ``x-request-id`` so Envoy's access log can
say which pool served it, and timed actions (``SIGSTOP`` the router at 2 s, ``SIGCONT`` at 10 s) run on
a worker thread so the schedule never waits for them. The hang test, the flood test and
``benchmarks/router_hang.py`` all measure with this one driver.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aiohttp

CHAT_PATH = "/v1/chat/completions"
_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Sent:
    """One request's fate: when it left (seconds since the run started), how long until its last
    byte, its status (0: no HTTP answer) and, for those, the error."""

    request_id: str
    sent_s: float
    latency_s: float
    status: int
    error: str = ""


@dataclass(frozen=True, slots=True)
class Summary:
    requests: int
    failed: int  # no answer, or a status other than 200
    p50_ms: float
    p99_ms: float
    max_ms: float

    def line(self) -> str:
        return (
            f"{self.requests} requests, {self.failed} failed, p50 {self.p50_ms:.1f} ms, "
            f"p99 {self.p99_ms:.1f} ms, max {self.max_ms:.1f} ms"
        )


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (no interpolation: a p99 is a latency some request really had)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(results: Sequence[Sent]) -> Summary:
    latencies = [r.latency_s * 1000.0 for r in results]
    return Summary(
        requests=len(results),
        failed=sum(1 for r in results if r.status != 200),
        p50_ms=quantile(latencies, 0.50),
        p99_ms=quantile(latencies, 0.99),
        max_ms=max(latencies, default=math.nan),
    )


async def _one(
    session: aiohttp.ClientSession, url: str, body: bytes, started: float, timeout_s: float, prefix: str
) -> Sent:
    request_id = f"{prefix}-{os.getpid()}-{next(_ids)}"
    sent = time.monotonic()
    headers = {"content-type": "application/json", "x-request-id": request_id}
    try:
        async with session.post(
            url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            await resp.read()  # to the last byte: a stream is only served once it ended
            status, error = resp.status, "" if resp.status == 200 else f"http_{resp.status}"
    except TimeoutError:
        status, error = 0, "timeout"
    except aiohttp.ClientError as exc:
        status, error = 0, type(exc).__name__
    return Sent(request_id, sent - started, time.monotonic() - sent, status, error)


async def open_loop(
    base_url: str,
    body: Callable[[int], bytes],
    rate: float,
    duration_s: float,
    actions: Sequence[tuple[float, Callable[[], object]]] = (),
    timeout_s: float = 30.0,
    path: str = CHAT_PATH,
    prefix: str = "load",
) -> list[Sent]:
    """``rate`` requests per second for ``duration_s``, request ``i`` with ``body(i)``; each action
    ``(at_s, fn)`` runs once at its time. Returns every request's ``Sent``, in sending order."""
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be > 0")
    url = base_url + path
    count = max(1, int(rate * duration_s))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()

        async def act(at_s: float, fn: Callable[[], object]) -> None:
            await asyncio.sleep(max(0.0, started + at_s - time.monotonic()))
            await asyncio.to_thread(fn)

        acting = [asyncio.create_task(act(at, fn)) for at, fn in actions]
        tasks: list[asyncio.Task[Sent]] = []
        for i in range(count):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(_one(session, url, body(i), started, timeout_s, prefix)))
        results = await asyncio.gather(*tasks)
        await asyncio.gather(*acting)
    return list(results)
