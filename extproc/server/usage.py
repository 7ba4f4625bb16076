"""Read the token counts a backend reports in a JSON ``usage`` object (a context-length 400 is read by
``extproc.server.overflow``)."""

from __future__ import annotations

from typing import Any

import orjson


def _as_count(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def usage_counts(usage: Any) -> tuple[int | None, int | None]:
    """(prompt_tokens, completion_tokens) from a usage dict, accepting the input/output aliases."""
    if not isinstance(usage, dict):
        return None, None
    prompt = _as_count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _as_count(usage.get("completion_tokens", usage.get("output_tokens")))
    return prompt, completion


def json_usage(body: bytes) -> tuple[int | None, int | None]:
    prompt, completion, _ = json_response(body)
    return prompt, completion


def json_response(body: bytes) -> tuple[int | None, int | None, str | None]:
    """(prompt_tokens, completion_tokens, model) of a non-streaming completion body."""
    if b"usage" not in body:
        return None, None, None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(obj, dict):
        return None, None, None
    model = obj.get("model")
    return (*usage_counts(obj.get("usage")), model if isinstance(model, str) else None)
