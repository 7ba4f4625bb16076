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


def usage_object(payload: bytes, needle: bytes = b"usage") -> dict[str, Any] | None:
    """The JSON object of a completion body or of one SSE event's data, when it may carry usage (or
    ``needle``).

    The substring test first: most SSE events carry no usage, and skipping their parse is most of
    the response-side CPU saving.
    """
    if needle not in payload:
        return None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def model_of(obj: dict[str, Any]) -> str | None:
    model = obj.get("model")
    return model if isinstance(model, str) else None


def length_stop(obj: dict[str, Any]) -> bool:
    """Whether an answer (a completion body, a stream chunk, a Responses object) says some sequence
    stopped at its length: a choice with ``finish_reason: "length"``, or a Responses answer
    ``incomplete`` for ``max_output_tokens`` (vLLM's word for a cut answer there)."""
    choices = obj.get("choices")
    if isinstance(choices, list):
        return any(isinstance(c, dict) and c.get("finish_reason") == "length" for c in choices)
    if obj.get("status") == "incomplete":
        details = obj.get("incomplete_details")
        return isinstance(details, dict) and details.get("reason") == "max_output_tokens"
    return False


def json_response(body: bytes) -> tuple[int | None, int | None, str | None, bool]:
    """(prompt_tokens, completion_tokens, model, length_stop) of a non-streaming completion body."""
    obj = usage_object(body)
    if obj is None:
        return None, None, None, False
    return (*usage_counts(obj.get("usage")), model_of(obj), length_stop(obj))
