"""Response bodies and SSE chunks with vLLM's field layout (0.10/0.11 OpenAI server).

Non-streaming bodies are full ``model_dump()`` output (``null`` fields included); stream chunks are
``model_dump_json(exclude_unset=True)``, so they carry only the fields vLLM sets explicitly; the
usage-only chunk drops ``null`` fields and has ``"choices": []``.
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
def chat_role_chunk(env: Envelope) -> bytes:
    choice = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    return sse({**env.head(CHAT_CHUNK), "choices": [choice], "prompt_token_ids": None})


def chat_token_chunk(env: Envelope, text: str, finish_reason: str | None) -> bytes:
    choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": finish_reason}
    if finish_reason is not None:
        choice["stop_reason"] = None
    choice["token_ids"] = None
    return sse({**env.head(CHAT_CHUNK), "choices": [choice]})


def chat_body(env: Envelope, text: str, finish_reason: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    message = {
        "role": "assistant",
        "content": text,
        "refusal": None,
        "annotations": None,
        "audio": None,
        "function_call": None,
        "tool_calls": [],
        "reasoning_content": None,
    }
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": finish_reason,
        "stop_reason": None,
        "token_ids": None,
    }
    return orjson.dumps(
        {
            **env.head("chat.completion"),
            "choices": [choice],
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


def completion_body(
    env: Envelope, texts: list[str], finish_reason: str, prompt_tokens: int, completion_tokens: int
) -> bytes:
    choices = [
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
        for i, text in enumerate(texts)
    ]
    return orjson.dumps(
        {
            **env.head(TEXT_COMPLETION),
            "choices": choices,
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
