"""Response bodies and SSE chunks with vLLM's field layout (0.10/0.11 OpenAI server).

Non-streaming bodies are full ``model_dump()`` output (``null`` fields included); stream chunks are
``model_dump_json(exclude_unset=True)``, so they carry only the fields vLLM sets explicitly; the
usage-only chunk drops ``null`` fields and has ``"choices": []``. With ``n > 1`` every choice has its
own ``index`` and ``finish_reason``; usage counts the prompt once and the tokens of all choices.

The Responses API (``/v1/responses``) answers a ``response`` object whose ``usage`` has
``input_tokens``/``output_tokens``; its stream is typed events (``event: TYPE`` + ``data:`` lines,
each with a ``sequence_number``), the last one ``response.completed`` carrying the usage, no ``[DONE]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

CHAT_CHUNK = "chat.completion.chunk"
TEXT_COMPLETION = "text_completion"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Envelope:
    """The fields every body or chunk of one response shares."""

    id: str
    created: int
    model: str

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def usage(prompt_tokens: int, completion_tokens: int, *, details: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "completion_tokens": completion_tokens,
    }
    if details:
        out["prompt_tokens_details"] = None
    return out


def usage_chunk(env: Envelope, obj: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    return sse({**env.head(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens, details=False)})


# ---- chat --------------------------------------------------------------------------------------
def chat_role_chunk(env: Envelope, index: int = 0) -> bytes:
    choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    return sse({**env.head(CHAT_CHUNK), "choices": [choice], "prompt_token_ids": None})


def chat_token_chunk(env: Envelope, text: str, finish_reason: str | None, index: int = 0) -> bytes:
    choice: dict[str, Any] = {
        "index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason,
    }  # fmt: skip
    if finish_reason is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return sse({**env.head(CHAT_CHUNK), "choices": [choice]})


def chat_body(env: Envelope, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int) -> bytes:
    """``choices``: (text, finish_reason) per choice index."""
    out: list[dict[str, Any]] = [
        {
            "index": i,
            "message": {
                "role": "assistant",
                "content": text,
                "refusal": None,
                "annotations": None,
                "audio": None,
                "function_call": None,
                "tool_calls": [],
                "reasoning_content": None,
            },
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
        }
        for i, (text, finish_reason) in enumerate(choices)
    ]
    return orjson.dumps(
        {
            **env.head("chat.completion"),
            "choices": out,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage(prompt_tokens, completion_tokens, details=True),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "kv_transfer_params": None,
        }
    )


# ---- completions -------------------------------------------------------------------------------
def completion_chunk(env: Envelope, index: int, text: str, finish_reason: str | None) -> bytes:
    choice = {
        "index": index,
        "text": text,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "prompt_token_ids": None,
        "token_ids": None,
    }
    return sse({**env.head(TEXT_COMPLETION), "choices": [choice]})


def completion_body(env: Envelope, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int) -> bytes:
    """``choices``: (text, finish_reason) per choice index."""
    out = [
        {
            "index": i,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "token_ids": None,
        }
        for i, (text, finish_reason) in enumerate(choices)
    ]
    return orjson.dumps(
        {
            **env.head(TEXT_COMPLETION),
            "choices": out,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": usage(prompt_tokens, completion_tokens, details=True),
            "kv_transfer_params": None,
        }
    )


def models_body(model: str, created: int, max_model_len: int) -> bytes:
    permission = {
        "id": f"modelperm-{model}",
        "object": "model_permission",
        "created": created,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "vllm",
        "root": model,
        "parent": None,
        "max_model_len": max_model_len,
        "permission": [permission],
    }
    return orjson.dumps({"object": "list", "data": [card]})


# ---- responses ---------------------------------------------------------------------------------
def responses_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


@dataclass(frozen=True)
class ResponseHead:
    """The request fields a ``response`` object echoes."""

    env: Envelope
    instructions: str | None
    max_output_tokens: int | None

    @property
    def item_id(self) -> str:
        return "msg_" + self.env.id.removeprefix("resp_")

    def message(self, text: str | None) -> dict[str, Any]:
        """The output message item: in progress (no text yet) or completed."""
        if text is None:
            return {"id": self.item_id, "content": [], "role": "assistant", "status": "in_progress", "type": "message"}
        part: dict[str, Any] = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
        return {"id": self.item_id, "content": [part], "role": "assistant", "status": "completed", "type": "message"}

    def response(self, text: str | None, finish_reason: str | None, usage: dict[str, Any] | None) -> dict[str, Any]:
        """The ``response`` object; ``text`` None while in progress. A used-up budget is incomplete."""
        if text is None:
            status, incomplete = "in_progress", None
        elif finish_reason == "length":
            status, incomplete = "incomplete", {"reason": "max_output_tokens"}
        else:
            status, incomplete = "completed", None
        return {
            "id": self.env.id,
            "created_at": self.env.created,
            "incomplete_details": incomplete,
            "instructions": self.instructions,
            "metadata": None,
            "model": self.env.model,
            "object": "response",
            "output": [] if text is None else [self.message(text)],
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "background": False,
            "max_output_tokens": self.max_output_tokens,
            "max_tool_calls": None,
            "previous_response_id": None,
            "prompt": None,
            "reasoning": None,
            "service_tier": "auto",
            "status": status,
            "text": None,
            "top_logprobs": None,
            "truncation": "disabled",
            "usage": usage,
            "user": None,
        }


def response_body(head: ResponseHead, text: str, finish_reason: str, input_tokens: int, output_tokens: int) -> bytes:
    return orjson.dumps(head.response(text, finish_reason, responses_usage(input_tokens, output_tokens)))


class ResponseEvents:
    """The typed SSE events of one streamed response, numbered in order."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.seq = 0

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.head.item_id, "output_index": 0, "content_index": 0}

    def start(self) -> bytes:
        h = self.head
        return b"".join(
            (
                self._event("response.created", {"response": h.response(None, None, None)}),
                self._event("response.in_progress", {"response": h.response(None, None, None)}),
                self._event("response.output_item.added", {"output_index": 0, "item": h.message(None)}),
                self._event(
                    "response.content_part.added",
                    {**self._where(), "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}},
                ),
            )
        )

    def delta(self, text: str) -> bytes:
        return self._event("response.output_text.delta", {**self._where(), "delta": text, "logprobs": []})

    def finish(self, text: str, finish_reason: str, usage: dict[str, Any] | None) -> bytes:
        """The closing events; ``usage`` None drops the final event (a stream that lost it)."""
        h = self.head
        out = [
            self._event("response.output_text.done", {**self._where(), "text": text, "logprobs": []}),
            self._event(
                "response.content_part.done",
                {**self._where(), "part": {"type": "output_text", "text": text, "annotations": []}},
            ),
            self._event("response.output_item.done", {"output_index": 0, "item": h.message(text)}),
        ]
        if usage is not None:
            out.append(self._event("response.completed", {"response": h.response(text, finish_reason, usage)}))
        return b"".join(out)
