"""Exact prompt counts from the engine itself: vLLM's ``POST /tokenize`` for the few requests whose
estimate cannot tell which side of ``B_short`` they fall on.

The engine renders the request exactly as it will when serving it (its tokenizer, its chat template,
the tools), so its ``count`` is the ``usage.prompt_tokens`` the answer would report, for any model and
without a tokenizer in the router. The price is one loopback round trip for a few per cent of
requests, so the wait is bounded hard: one deadline per count (``estimator.engine_count_timeout_s``),
a cap on counts in flight, and an engine that timed out or failed twice in a row is not asked again for
250 ms.
Whatever goes wrong, the request is routed by its estimate at once and the fallback is counted by
reason (``timeout``, ``error``, ``busy``, ``unavailable``): a slow or hung engine costs accuracy,
never a request and never more than the deadline.

Which engines: the ones live load scrapes (``extproc.server.pool_load``: static endpoints or Envoy's
admin discovery), of the pool the estimate chose, and of those only the ones whose latest scrape is
fresh (a stopped engine's scrapes fail, so it drops out within ``live_load.max_age_s``).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from extproc.algorithm import endpoints
from extproc.algorithm.request_shape import RequestShape

TOKENIZE_PATH = "/tokenize"
COUNTED, TIMEOUT, ERROR, BUSY, UNAVAILABLE = "counted", "timeout", "error", "busy", "unavailable"
OUTCOMES = (COUNTED, TIMEOUT, ERROR, BUSY, UNAVAILABLE)
# An engine that timed out or failed twice in a row is skipped this long: a hung one costs two deadlines
# per cool-down until its stale scrape drops it (live_load.max_age_s), while one slow answer (a loaded
# host, a pause) costs no counts at all.
COOLDOWN_S = 0.25
FAILURES_BEFORE_COOLDOWN = 2
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # the token list of a 128K-token prompt is ~1 MB of JSON
# Request fields that change what the chat template renders, passed on to /tokenize as they are.
_CHAT_FIELDS = ("tools", "continue_final_message", "add_special_tokens", "chat_template", "chat_template_kwargs")


@dataclass(frozen=True, slots=True)
class CountResult:
    count: int | None  # None: route by the estimate
    outcome: str  # one of OUTCOMES
    seconds: float  # how long the request waited for it


def tokenize_payload(shape: RequestShape, body: Mapping[str, Any]) -> bytes | None:
    """The ``/tokenize`` body that renders ``body`` as its endpoint would, or None when the API has
    no such form. Chat: the messages with the generation prompt (vLLM adds it unless the request says
    otherwise) and whatever else the template reads; completions: the longest prompt of a batch."""
    api = endpoints.named(shape.endpoint)
    if api is None or not api.tokenize:
        return None
    out: dict[str, Any] = {"model": body["model"]} if isinstance(body.get("model"), str) else {}
    if api is endpoints.CHAT:
        out["messages"] = body["messages"]
        out["add_generation_prompt"] = body.get("add_generation_prompt", True)
        out.update({k: body[k] for k in _CHAT_FIELDS if k in body})
    elif shape.texts:
        out["prompt"] = shape.texts[0]
        if "add_special_tokens" in body:
            out["add_special_tokens"] = body["add_special_tokens"]
    else:
        return None
    try:
        return orjson.dumps(out)
    except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits; the engine would refuse it
        return None


def parse_count(body: bytes) -> int | None:
    """``count`` of a ``/tokenize`` answer, None for anything else."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    count = doc.get("count") if isinstance(doc, dict) else None
    return count if type(count) is int and count >= 0 else None


class EngineCounter:
    """Counts prompts on the pools' engines under a deadline; one per router process."""

    def __init__(
        self,
        members: Callable[[str], Sequence[str]],
        timeout_s: float,
        max_in_flight: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``members(pool)``: base URLs (``http://host:port``) of the pool's engines that answer now."""
        self.members = members
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.clock = clock
        self.in_flight = 0
        self.outcomes: Counter[str] = Counter({o: 0 for o in OUTCOMES})
        self._down_until: dict[str, float] = {}
        self._failures: Counter[str] = Counter()  # consecutive failures per engine
        self._turn = 0
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=60))

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _endpoint(self, pool: str) -> str | None:
        """The next engine of ``pool`` in turn that is not cooling down after a failure."""
        now = self.clock()
        urls = [u for u in self.members(pool) if self._down_until.get(u, 0.0) <= now]
        if not urls:
            return None
        self._turn += 1
        return urls[self._turn % len(urls)]

    async def count(self, pool: str, payload: bytes) -> CountResult:
        """The engine's count of the prompt in ``payload``, or the reason there is none; never raises
        (but for cancellation) and never waits past the deadline."""
        began = self.clock()
        if self.in_flight >= self.max_in_flight:
            return self._done(None, BUSY, began)
        url = self._endpoint(pool)
        if url is None or self._session is None:
            return self._done(None, UNAVAILABLE, began)
        self.in_flight += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                async with self._session.post(
                    url + TOKENIZE_PATH, data=payload, headers={"content-type": "application/json"}
                ) as resp:
                    body = await resp.content.read(MAX_ANSWER_BYTES + 1)
                    status = resp.status
        except TimeoutError:
            return self._failed(url, TIMEOUT, began)
        except (aiohttp.ClientError, OSError, ValueError):
            return self._failed(url, ERROR, began)
        finally:
            self.in_flight -= 1
        count = parse_count(body) if status == 200 and len(body) <= MAX_ANSWER_BYTES else None
        if count is None:  # an engine without /tokenize (404) or another error
            return self._failed(url, ERROR, began)
        self._failures.pop(url, None)
        return self._done(count, COUNTED, began)

    def _failed(self, url: str, outcome: str, began: float) -> CountResult:
        self._failures[url] += 1
        if self._failures[url] >= FAILURES_BEFORE_COOLDOWN:
            self._down_until[url] = self.clock() + COOLDOWN_S
        return self._done(None, outcome, began)

    def _done(self, count: int | None, outcome: str, began: float) -> CountResult:
        self.outcomes[outcome] += 1
        return CountResult(count, outcome, self.clock() - began)
