"""What the end-to-end tests do as an HTTP client, and how they read the router's learning back."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from extproc.emulator.engine_args import EmulatorConfig
from extproc.stack.stack import Stack
from extproc.workload.prompts import chat_body

MODEL = EmulatorConfig().model
CHAT_PATH = "/v1/chat/completions"
_ids = itertools.count(1)


@dataclass
class Reply:
    request_id: str
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def body_for(category: str, prompt_tokens: int, max_tokens: int = 8, seed: int = 0, **options: Any) -> dict[str, Any]:
    return chat_body(category, prompt_tokens, model=MODEL, max_tokens=max_tokens, seed=seed, **options)


async def post(
    session: aiohttp.ClientSession,
    base_url: str,
    body: dict[str, Any] | bytes,
    headers: dict[str, str] | None = None,
    path: str = CHAT_PATH,
    timeout_s: float = 60.0,
) -> Reply:
    """One request with our own ``x-request-id`` (Envoy keeps it, so its access log names the pool)."""
    request_id = f"e2e-{time.monotonic_ns()}-{next(_ids)}"
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    hdrs = {"content-type": "application/json", "x-request-id": request_id, **(headers or {})}
    async with session.post(
        base_url + path, data=data, headers=hdrs, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as resp:
        raw = await resp.read()
        return Reply(request_id, resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw)


def sse_payloads(raw: bytes) -> list[bytes]:
    """The ``data:`` payloads of an SSE body, in order."""
    return [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]


def is_usage_only(payload: bytes) -> bool:
    if payload == b"[DONE]":
        return False
    chunk = orjson.loads(payload)
    return not chunk.get("choices") and chunk.get("usage") is not None


def calibration(stack: Stack) -> dict[str, dict[str, float]]:
    """The freshest replica snapshot in the router's state file ({} before the first save)."""
    try:
        data = orjson.loads(stack.state_file.read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    replicas = data.get("replicas") or {}
    if not replicas:
        return {}
    newest = max(replicas.values(), key=lambda entry: entry.get("updated", 0))
    return newest.get("categories", {})


def samples(stack: Stack, category: str) -> int:
    return int(calibration(stack).get(category, {}).get("samples", 0))


def wait_samples(stack: Stack, category: str, at_least: int, timeout_s: float = 10.0) -> int:
    """Until the saved calibration holds ``at_least`` samples of ``category`` (saves run every second)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = samples(stack, category)
        if got >= at_least:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"router state has {got} {category} samples after {timeout_s}s, wanted {at_least}")
        time.sleep(0.1)
