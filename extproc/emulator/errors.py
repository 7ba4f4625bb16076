"""vLLM's error answers: the two JSON body shapes and the context-length messages of its versions.

Current vLLM (OpenAI server, ``ErrorResponse``) answers ``{"error": {"message", "type", "param",
"code"}}``; releases before 0.10 answered a flat ``{"object": "error", "message", "type", "param",
"code"}``. The context-length wording changed too, and clients parse it (compaction, retries), so
the emulator can speak each variant a router might meet in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ERROR_SHAPES = ("nested", "flat")
# current: vLLM >= 0.10 (two checks, "(parameter=..., value=...)" suffix, param set);
# legacy: vLLM 0.4-0.9 ("you requested M tokens (P in the messages, C in the completion)");
# requested: the "Requested token count exceeds ..." wording (SGLang and vLLM forks).
CONTEXT_STYLES = ("current", "legacy", "requested")

ERROR_TYPES = {
    400: "BadRequestError",
    401: "UnauthorizedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestEntityTooLargeError",
    429: "TooManyRequestsError",
    500: "InternalServerError",
    501: "NotImplementedError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


@dataclass(frozen=True)
class ApiError(Exception):
    """An OpenAI-style error answer; raised anywhere in request handling, rendered once."""

    status: int
    message: str
    param: str | None = None
    type: str | None = None

    def __str__(self) -> str:
        return self.message


def error_body(err: ApiError, shape: str) -> bytes:
    info: dict[str, Any] = {
        "message": err.message,
        "type": err.type or ERROR_TYPES.get(err.status, "BadRequestError"),
        "param": err.param,
        "code": err.status,
    }
    if shape == "flat":
        return orjson.dumps({"object": "error", **info})
    return orjson.dumps({"error": info})


def _with_extras(message: str, parameter: str, value: int) -> str:
    """vLLM's ``VLLMValidationError.__str__`` appends the offending parameter and value."""
    return f"{message} (parameter={parameter}, value={value})"


def context_length_error(style: str, max_model_len: int, prompt_tokens: int, max_tokens: int | None) -> ApiError | None:
    """The 400 vLLM gives when a prompt (plus its ``max_tokens``) does not fit, or None if it fits.

    ``max_tokens`` is None when the request set neither max_tokens nor max_completion_tokens: then
    vLLM only checks that the prompt leaves room for one generated token.
    """
    total = prompt_tokens + (max_tokens or 0)
    prompt_full = prompt_tokens >= max_model_len
    if not prompt_full and (max_tokens is None or total <= max_model_len):
        return None
    head = f"This model's maximum context length is {max_model_len} tokens."
    if style == "legacy":
        if max_tokens is None:
            msg = (
                f"{head} However, you requested {prompt_tokens} tokens in the messages, "
                "Please reduce the length of the messages."
            )
        else:
            msg = (
                f"{head} However, you requested {total} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or completion."
            )
        return ApiError(400, msg)
    if style == "requested":
        completion = max_tokens if max_tokens is not None else 0
        msg = (
            f"Requested token count exceeds the model's maximum context length of {max_model_len} "
            f"tokens. You requested a total of {prompt_tokens + completion} tokens: {prompt_tokens} "
            f"tokens from the input messages and {completion} tokens for the completion. Please reduce "
            "the number of tokens in the input messages or the completion to fit within the limit."
        )
        return ApiError(400, msg)
    if prompt_full:
        msg = (
            f"{head} However, your request has {prompt_tokens} input tokens. "
            "Please reduce the length of the input messages."
        )
        return ApiError(400, _with_extras(msg, "input_tokens", prompt_tokens), param="input_tokens")
    assert max_tokens is not None
    msg = (
        f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. {head[:-1]} and your "
        f"request has {prompt_tokens} input tokens ({max_tokens} > {max_model_len} - {prompt_tokens})."
    )
    return ApiError(400, _with_extras(msg, "max_tokens", max_tokens), param="max_tokens")
