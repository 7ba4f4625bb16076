"""Drive a workload through Envoy like real clients would: open-loop arrivals on the trace's re-timed
schedule, real text of each request's category sized to its prompt tokens, ``max_tokens`` from its
output tokens, a share of streaming requests read chunk by chunk.

Bodies are built before the clock starts, so arrival times are not skewed by prompt construction. The
concurrency cap exists only to keep a laptop alive under an overload; when it binds, arrivals queue in
the client and the report says so (``client_queued``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp
import numpy as np
import orjson

from extproc.emulator.engine_args import EmulatorConfig
from extproc.workload.corpus import get_encoding
from extproc.workload.prompts import request_body
from extproc.workload.trace import TraceRequest

MODEL = EmulatorConfig().model
CHAT_PATH = "/v1/chat/completions"
OVERFLOW_MARKERS = (b"maximum context length", b"context length")


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    request_id: str
    arrival_s: float
    category: str
    prompt_tokens: int  # exact BPE tokens of the message text (the emulator adds its template)
    output_tokens: int
    expected_usage: int  # usage.prompt_tokens the emulator reports: text + its chat template
    stream: bool
    text_bytes: int
    body: bytes


@dataclass(slots=True)
class Outcome:
    request: PlannedRequest
    sent_s: float = 0.0  # since the replay started
    latency_s: float | None = None  # to the last byte
    first_byte_s: float | None = None
    status: int = 0  # 0: no HTTP answer (connection error or timeout)
    error: str = ""  # "", context_overflow, http_<status>, timeout, connection
    client_queued_s: float = 0.0  # time waiting for the client's concurrency cap
    usage: dict[str, int] = field(default_factory=dict)


def plan(
    requests: Sequence[TraceRequest], stream_share: float, seed: int, id_prefix: str = "replay", model: str = MODEL
) -> list[PlannedRequest]:
    """One body per trace request, naming the ``model`` the pools serve; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    template = emulator_template_tokens()
    streams = rng.random(len(requests)) < stream_share
    seeds = rng.integers(0, 2**31, size=len(requests))
    out: list[PlannedRequest] = []
    for i, (req, stream, s) in enumerate(zip(requests, streams, seeds, strict=True)):
        doc = request_body(req, model=model, seed=int(s), stream=bool(stream))
        text = doc["messages"][-1]["content"]
        out.append(
            PlannedRequest(
                request_id=f"{id_prefix}-{i:06d}",
                arrival_s=req.arrival_s,
                category=str(req.category),
                prompt_tokens=req.prompt_tokens,
                output_tokens=req.output_tokens,
                expected_usage=req.prompt_tokens + template,
                stream=bool(stream),
                text_bytes=len(text.encode()),
                body=orjson.dumps(doc),
            )
        )
    return out


def emulator_template_tokens(role: str = "user") -> int:
    """What the emulator's chat template adds to a one-message request (see ``PromptCounter.chat``)."""
    cfg = EmulatorConfig()
    role_tokens = len(get_encoding(cfg.encoding).encode(role))
    return cfg.template_tokens_per_request + cfg.template_tokens_per_message + role_tokens


def _classify(status: int, body: bytes) -> str:
    if 200 <= status < 300:
        return ""
    if status == 400 and any(m in body for m in OVERFLOW_MARKERS):
        return "context_overflow"
    return f"http_{status}"


def _usage(body: bytes) -> dict[str, int]:
    try:
        usage = orjson.loads(body).get("usage") or {}
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return {k: v for k, v in usage.items() if isinstance(v, int)}


class Replayer:
    """Sends ``planned`` to ``base_url`` on schedule; ``on_done`` is called after every outcome."""

    def __init__(
        self,
        base_url: str,
        planned: Sequence[PlannedRequest],
        concurrency: int = 256,
        timeout_s: float = 600.0,
        on_done: Callable[[Outcome], None] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self.url = base_url.rstrip("/") + CHAT_PATH
        self.planned = list(planned)
        self.concurrency = concurrency
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.on_done = on_done
        self.outcomes: list[Outcome] = []
        self.in_flight = 0
        self.sent = 0
        self.started_at = 0.0

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at if self.started_at else 0.0

    async def run(self) -> list[Outcome]:
        gate = asyncio.Semaphore(self.concurrency)
        connector = aiohttp.TCPConnector(limit=self.concurrency, force_close=False)
        async with aiohttp.ClientSession(connector=connector, timeout=self.timeout) as session:
            self.started_at = time.monotonic()
            tasks: list[asyncio.Task[None]] = []
            try:
                for req in self.planned:
                    delay = req.arrival_s - self.elapsed()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(self._one(session, gate, req)))
                    self.sent += 1
                await asyncio.gather(*tasks)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return self.outcomes

    async def _one(self, session: aiohttp.ClientSession, gate: asyncio.Semaphore, req: PlannedRequest) -> None:
        out = Outcome(req)
        queued = time.monotonic()
        async with gate:
            self.in_flight += 1
            t0 = time.monotonic()
            out.client_queued_s = t0 - queued
            out.sent_s = t0 - self.started_at
            headers = {"content-type": "application/json", "x-request-id": req.request_id}
            try:
                async with session.post(self.url, data=req.body, headers=headers) as resp:
                    out.status = resp.status
                    parts: list[bytes] = []
                    async for chunk in resp.content.iter_any():
                        if out.first_byte_s is None:
                            out.first_byte_s = time.monotonic() - t0
                        parts.append(chunk)
                    body = b"".join(parts)
                out.latency_s = time.monotonic() - t0
                out.error = _classify(out.status, body)
                if not req.stream:
                    out.usage = _usage(body)
            except TimeoutError:
                out.error = "timeout"
            except aiohttp.ClientError as exc:
                out.error = f"connection: {type(exc).__name__}"
            finally:
                self.in_flight -= 1
        self.outcomes.append(out)
        if self.on_done is not None:
            self.on_done(out)
