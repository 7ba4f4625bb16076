"""A small synchronous client for one real vLLM server (or one emulator), and what the real-engine
tests read back from the router. Shared by the real-engine suite and the emulator-vs-vLLM conformance
test: the engine's own ``/tokenize`` is the truth every count is checked against.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from extproc.stack.router_view import read_decisions
from extproc.stack.stack import Stack
from tests.waiting import until

Messages = Sequence[dict[str, Any]]


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


class EngineClient:
    """HTTP/1.1 to ``base_url`` (a pool directly, or Envoy), one connection per call."""

    def __init__(self, base_url: str, model: str, timeout_s: float = 120.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.model = model
        self.timeout_s = timeout_s

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Answer:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        try:
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            hdrs = {"content-type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            return Answer(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def post(self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Answer:
        return self.request("POST", path, {"model": self.model, **body}, headers)

    def chat(
        self, messages: Messages | str, max_tokens: int | None = 8, headers: dict[str, str] | None = None, **extra: Any
    ) -> Answer:
        """A chat completion; ``ignore_eos`` so random weights give the asked length exactly."""
        msgs = user(messages) if isinstance(messages, str) else list(messages)
        body: dict[str, Any] = {"messages": msgs, "ignore_eos": True, **extra}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        return self.post("/v1/chat/completions", body, headers)

    def chat_count(self, messages: Messages | str) -> int:
        """The engine's own count of a chat request's prompt (template included): ``usage.prompt_tokens``."""
        msgs = user(messages) if isinstance(messages, str) else list(messages)
        answer = self.post("/tokenize", {"messages": msgs, "add_generation_prompt": True})
        assert answer.status == 200, answer.body[:300]
        return int(answer.json()["count"])

    def prompt_count(self, prompt: str) -> int:
        """The engine's count of a plain (completions) prompt, BOS included."""
        answer = self.post("/tokenize", {"prompt": prompt})
        assert answer.status == 200, answer.body[:300]
        return int(answer.json()["count"])

    def metrics(self) -> bytes:
        return self.request("GET", "/metrics").body

    def max_model_len(self) -> int:
        models = self.request("GET", "/v1/models").json()["data"]
        return int(next(m for m in models if m["id"] == self.model)["max_model_len"])


def exact_chat(client: EngineClient, make_text: Callable[[int, int], str], tokens: int, seeds: int = 8) -> str:
    """A one-message chat text whose engine count is exactly ``tokens`` (template included), found by
    bisection over ``make_text(n, seed)`` (a text of about n tokens that grows with n). The count is the
    engine's ``/tokenize``, never an estimate; where one seed's sizes skip the target, the next is tried."""
    for seed in range(seeds):
        lo, hi = 1, tokens * 2
        while lo <= hi:
            mid = (lo + hi) // 2
            text = make_text(mid, seed)
            got = client.chat_count(text)
            if got == tokens:
                return text
            lo, hi = (mid + 1, hi) if got < tokens else (lo, mid - 1)
    raise AssertionError(f"no text of exactly {tokens} tokens in {seeds} seeds")


def decisions(stack: Stack, request_ids: Iterable[str], timeout_s: float = 20.0) -> dict[str, dict[str, Any]]:
    """The routers' decision lines for ``request_ids`` (waiting until every one is logged)."""
    wanted = set(request_ids)
    logs = [p.log_path for p in stack.routers]
    return until(
        lambda: read_decisions(logs), "the router's decision lines", ok=lambda got: wanted <= set(got),
        timeout_s=timeout_s, interval_s=0.1,
    )  # fmt: skip


def request_id(tag: str) -> str:
    return f"vllm-{tag}-{time.monotonic_ns()}"
