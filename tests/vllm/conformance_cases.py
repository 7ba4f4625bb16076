"""The request set the conformance test sends to the emulator and to real vLLM, and what it compares.

Each ``Case`` is one HTTP request; ``signature`` reduces an answer to what a client or the router
depends on and what is deterministic with a random-weight model: status, error shape and wording
class (the exact wording where vLLM's is fixed, e.g. "at least L+1"), usage presence, shape and
numbers (``ignore_eos`` makes output lengths exact), SSE framing (``data:`` lines, where
``finish_reason`` and usage ride, ``choices: []``, ``[DONE]``), Responses events, and the
``/tokenize``, ``/v1/models`` and ``/metrics`` answers. Generated text is never compared: the
emulator's words are not a model's.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson

CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"
TIMEOUT_S = 120.0
# A word that is one Llama-3 token with and without its leading space: prompts of exact sizes.
WORD = "hello"


@dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes


def request(base_url: str, method: str, path: str, body: bytes | None = None) -> Answer:
    """One request over a fresh connection, the body read to the end (SSE included), bytes as sent."""
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=TIMEOUT_S)
    try:
        headers = {"content-type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return Answer(resp.status, (resp.getheader("content-type") or "").split(";")[0].strip(), resp.read())
    finally:
        conn.close()


def words(n: int) -> str:
    """Text of exactly ``n`` Llama-3 tokens."""
    return WORD + f" {WORD}" * (n - 1)


# ---- wording classes -----------------------------------------------------------------------------
WORDINGS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (name, re.compile(pattern))
    for name, pattern in (
        ("prompt_over_context", r"your prompt contains (at least )?\d+ input tokens, which exceeds this limit"),
        ("input_characters", r"your prompt contains \d+ characters"),
        ("max_tokens_at_least_1", r"max_tokens must be at least 1, got -?\d+"),
        ("output_over_context", r"\w+=\d+ cannot be greater than max_model_len=\d+"),
        ("unknown_model", r"The model `[^`]*` does not exist"),
        ("invalid_json", r"JSON decode error|json_invalid"),
        ("stream_options_without_stream", r"Stream options can only be defined when `stream=True`"),
        ("not_an_integer", r"valid integer|int_parsing|int_from_float"),
        ("not_an_object", r"valid dictionary|dict_type|model_attributes_type"),
        ("field_required", r"Field required|'missing'"),
        ("multimodal_refused", r"not a multimodal model|does not support multimodal|image"),
        ("n_refused", r"\bn\b.*(not permitted|not supported)|extra_forbidden"),
    )
)


def wording(message: str) -> str:
    for name, pattern in WORDINGS:
        if pattern.search(message):
            return name
    return "other"


# ---- signatures ----------------------------------------------------------------------------------
def _error(body: Any, exact: bool) -> dict[str, Any]:
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return {"error_shape": "not nested", "keys": sorted(body) if isinstance(body, dict) else type(body).__name__}
    out: dict[str, Any] = {
        "error_shape": sorted(body), "error_keys": sorted(err), "type": err.get("type"), "code": err.get("code"),
        "param": err.get("param"), "wording": wording(str(err.get("message"))),
    }  # fmt: skip
    if exact:
        out["message"] = err.get("message")
    return out


def _usage(usage: Any) -> Any:
    if not isinstance(usage, dict):
        return usage
    numbers = ("prompt_tokens", "completion_tokens", "total_tokens", "input_tokens", "output_tokens")
    return {"keys": sorted(usage), **{k: usage[k] for k in numbers if k in usage}}


def _choices(choices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"index": c.get("index"), "finish_reason": c.get("finish_reason")} for c in choices]


def _json_body(path: str, body: dict[str, Any]) -> dict[str, Any]:
    if path == RESPONSES:
        output = body.get("output") or []
        return {"object": body.get("object"), "status": body.get("status"),
                "incomplete_details": body.get("incomplete_details"), "usage": _usage(body.get("usage")),
                "output_types": [o.get("type") for o in output]}  # fmt: skip
    return {"object": body.get("object"), "choices": _choices(body.get("choices") or []),
            "usage": _usage(body.get("usage"))}  # fmt: skip


def _chunk_kind(chunk: dict[str, Any]) -> tuple[int | None, str]:
    choices = chunk.get("choices")
    if choices == []:
        return None, "usage"
    (choice,) = choices  # vLLM sends one choice per chunk
    if choice.get("finish_reason"):
        return choice["index"], "finish"
    return choice["index"], "role" if "role" in (choice.get("delta") or {}) else "content"


def _sse_chunks(raw: bytes) -> dict[str, Any]:
    """Chat/completions SSE: framing; per choice index the kind of each chunk (runs of content chunks
    folded: how a model's tokens map to chunks is the detokenizer's business), and where usage rides.
    The interleaving of choices is the scheduler's, so only each choice's own order is compared."""
    frames = raw.split(b"\n\n")
    framing_ok = frames[-1] == b"" and all(f.startswith(b"data: ") and b"\n" not in f for f in frames[:-1])
    payloads = [f[6:] for f in frames[:-1]]
    per_choice: dict[int, list[str]] = {}
    tail: list[str] = []
    usage_on: list[str] = []
    usage_keys: set[tuple[str, ...]] = set()
    final_usage = None
    for p in payloads:
        if p == b"[DONE]":
            tail.append("DONE")
            continue
        chunk = orjson.loads(p)
        index, kind = _chunk_kind(chunk)
        if index is None:
            tail.append(kind)
        else:
            kinds = per_choice.setdefault(index, [])
            if not (kinds and kinds[-1] == kind == "content"):
                kinds.append(kind)
        if chunk.get("usage") is not None:
            usage_on.append(kind)
            usage_keys.add(tuple(sorted(chunk["usage"])))
            final_usage = _usage(chunk["usage"])
    every = len(usage_on) == len(payloads) - tail.count("DONE")
    return {"framing": framing_ok, "per_choice": per_choice, "tail": tail,
            "usage_on": "every chunk" if every and usage_on else sorted(set(usage_on)),
            "usage_keys": sorted(usage_keys), "final_usage": final_usage}  # fmt: skip


def _sse_events(raw: bytes) -> dict[str, Any]:
    """Responses SSE: ``event:`` + ``data:`` pairs, the event types in order (deltas folded), the last."""
    frames = raw.split(b"\n\n")
    types: list[str] = []
    last: dict[str, Any] = {}
    framing_ok = frames[-1] == b""
    for frame in frames[:-1]:
        lines = frame.split(b"\n")
        framing_ok &= len(lines) == 2 and lines[0].startswith(b"event: ") and lines[1].startswith(b"data: ")
        payload = orjson.loads(lines[-1].removeprefix(b"data: "))
        kind = payload.get("type", "?")
        if not (types and types[-1] == kind == "response.output_text.delta"):
            types.append(kind)
        last = payload
    response = last.get("response") or {}
    return {"framing": framing_ok, "types": types, "done": b"[DONE]" in raw, "status": response.get("status"),
            "incomplete_details": response.get("incomplete_details"), "usage": _usage(response.get("usage"))}


def signature(case: Case, answer: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {"status": answer.status, "content_type": answer.content_type}
    if case.reduce is not None:
        return {**out, **case.reduce(answer)}
    if answer.content_type == "text/event-stream":
        return {**out, **(_sse_events(answer.body) if case.path == RESPONSES else _sse_chunks(answer.body))}
    body = orjson.loads(answer.body) if answer.body else None
    if answer.status >= 400:
        return {**out, **_error(body, case.exact_message)}
    assert isinstance(body, dict), answer.body[:200]
    return {**out, **_json_body(case.path, body)}


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: dict[str, Any] | bytes | None = None
    method: str = "POST"
    exact_message: bool = False  # the error's wording is fixed in vLLM (no counts it may not know)
    reduce: Callable[[Answer], dict[str, Any]] | None = None  # a signature of its own (non-generation routes)
    model: bool = True  # fill in the served model's name
    extra: dict[str, Any] = field(default_factory=dict)

    def payload(self, model: str) -> bytes | None:
        if self.body is None or isinstance(self.body, bytes):
            return self.body
        body = {"model": model, **self.body} if self.model else dict(self.body)
        return orjson.dumps(body)
