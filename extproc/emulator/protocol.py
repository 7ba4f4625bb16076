"""Reading OpenAI requests the way vLLM's pydantic models do, and counting their prompt tokens.

Validation follows vLLM's lax pydantic parsing (``"7"`` and ``7.0`` are valid integers, ``7.5``
is not) and its request checks (``stream_options`` only with ``stream``, ``max_tokens >= 1``,
``max_completion_tokens`` wins over ``max_tokens``, /v1/completions defaults to 16 tokens).
Prompt tokens are the BPE count of every piece of text the chat template would include, plus the
template's own tokens, so ``usage.prompt_tokens`` grows with the request like a real model's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.emulator.engine_args import EmulatorConfig
from extproc.emulator.errors import ApiError, context_length_error
from extproc.emulator.tokens import TokenCounter

TEXT_PARTS = {"text": "text", "input_text": "text", "refusal": "refusal"}
MEDIA_PARTS = frozenset(
    {"image_url", "input_image", "image", "image_pil", "image_embeds", "input_audio", "audio_url", "video_url"}
)
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # vLLM's CompletionRequest.max_tokens default (OpenAI's too)


@dataclass(frozen=True)
class GenerationRequest:
    """What the engine needs to serve one validated request."""

    kind: str  # "chat" | "completion"
    model: str
    stream: bool
    include_usage: bool
    prompt_tokens: tuple[int, ...]  # one entry per prompt (chat: exactly one)
    output_tokens: int  # tokens to generate for each prompt
    finish_reason: str  # "length" when max_tokens was reached, "stop" for the EOS stand-in


def invalid(param: str, what: str) -> ApiError:
    return ApiError(400, f"{what} (body.{param})", param=param)


def lax_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, int):  # bool included, as pydantic's lax mode does
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise invalid(name, f"Input should be a valid integer, got {value!r}")


def lax_bool(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise invalid(name, f"Input should be a valid boolean, got {value!r}")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, f"JSON decode error: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"Input should be a valid dictionary or object, got {type(body).__name__}")
    return body


class PromptCounter:
    """Prompt token counts for chat messages and completion prompts under one config."""

    def __init__(self, cfg: EmulatorConfig, counter: TokenCounter) -> None:
        self.cfg = cfg
        self.bpe = counter

    def _json(self, value: Any) -> int:
        return self.bpe.count(orjson.dumps(value).decode())

    def _content(self, content: Any, where: str) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.bpe.count(content)
        if not isinstance(content, list):
            raise invalid(where, "Input should be a valid string or a list of content parts")
        total = 0
        for i, part in enumerate(content):
            if isinstance(part, str):
                total += self.bpe.count(part)
                continue
            if not isinstance(part, dict):
                raise invalid(f"{where}.{i}", "Content part should be an object")
            kind = part.get("type")
            if kind in TEXT_PARTS:
                text = part.get(TEXT_PARTS[kind])
                if not isinstance(text, str):
                    raise invalid(f"{where}.{i}.{TEXT_PARTS[kind]}", "Input should be a valid string")
                total += self.bpe.count(text)
            elif kind in MEDIA_PARTS:
                total += self.cfg.image_tokens
            else:
                raise invalid(f"{where}.{i}.type", f"Unknown part type: {kind!r}")
        return total

    def chat(self, body: Mapping[str, Any]) -> int:
        messages = body.get("messages")
        if messages is None:
            raise invalid("messages", "Field required")
        if not isinstance(messages, list):
            raise invalid("messages", "Input should be a valid list")
        total = self.cfg.template_tokens_per_request
        for i, msg in enumerate(messages):
            where = f"messages.{i}"
            if not isinstance(msg, dict):
                raise invalid(where, "Input should be a valid dictionary")
            role = msg.get("role")
            if not isinstance(role, str):
                raise invalid(f"{where}.role", "Field required (a string)")
            total += self.cfg.template_tokens_per_message + self.bpe.count(role)
            total += self._content(msg.get("content"), f"{where}.content")
            for key in ("name", "tool_call_id"):
                value = msg.get(key)
                if value is not None:
                    if not isinstance(value, str):
                        raise invalid(f"{where}.{key}", "Input should be a valid string")
                    total += self.bpe.count(value)
            calls = msg.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise invalid(f"{where}.tool_calls", "Input should be a valid list")
                total += self._json(calls)
        tools = body.get("tools")
        if tools is not None:
            if not isinstance(tools, list):
                raise invalid("tools", "Input should be a valid list")
            for i, tool in enumerate(tools):
                fn = tool.get("function") if isinstance(tool, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise invalid(f"tools.{i}.function.name", "Field required")
            if tools:
                total += self._json(tools)
        return total

    def completion(self, body: Mapping[str, Any]) -> tuple[int, ...]:
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid("prompt", "Field required")
        if isinstance(prompt, str):
            return (self.cfg.bos_tokens + self.bpe.count(prompt),)
        if not isinstance(prompt, list) or not prompt:
            raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.")
        if all(isinstance(p, str) for p in prompt):
            return tuple(self.cfg.bos_tokens + self.bpe.count(p) for p in prompt)
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return (self._ids(prompt),)
        if all(isinstance(p, list) for p in prompt):
            rows = []
            for row in prompt:
                if not all(isinstance(t, int) and not isinstance(t, bool) for t in row):
                    raise invalid("prompt", "Token id lists should hold integers only")
                rows.append(self._ids(row))
            return tuple(rows)
        raise invalid("prompt", "Input should be a string, a list of strings or a list of token ids")

    def _ids(self, ids: list[int]) -> int:
        bad = self.bpe.check_ids(ids)
        if bad is not None:
            raise ApiError(400, f"Token id {bad} is out of vocabulary")
        return len(ids)


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = bool(lax_bool(body, "stream"))
    options = body.get("stream_options")
    if options is None:
        return stream, False
    if not isinstance(options, dict):
        raise invalid("stream_options", "Input should be a valid dictionary")
    if not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.")
    include = lax_bool(options, "include_usage") if "include_usage" in options else True
    return stream, bool(include)


def _check_model(cfg: EmulatorConfig, body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if model is None or model == "":
        return
    if not isinstance(model, str):
        raise invalid("model", "Input should be a valid string")
    if model != cfg.model:
        raise ApiError(404, f"The model `{model}` does not exist.", param="model", type="NotFoundError")


def parse_generation(
    kind: str, body: Mapping[str, Any], cfg: EmulatorConfig, prompts: PromptCounter
) -> GenerationRequest:
    """Validate a /v1/chat/completions (``kind="chat"``) or /v1/completions body like vLLM."""
    _check_model(cfg, body)
    stream, include_usage = _stream_flags(body)
    n = lax_int(body, "n")
    if n is not None and n != 1:
        raise invalid("n", "The emulator serves n=1 only")
    if kind == "chat":
        prompt_tokens: tuple[int, ...] = (prompts.chat(body),)
        completion_cap, max_tokens = lax_int(body, "max_completion_tokens"), lax_int(body, "max_tokens")
        requested = completion_cap or max_tokens  # vLLM's precedence, 0 included
        default = cfg.default_output_tokens
    else:
        prompt_tokens = prompts.completion(body)
        requested = lax_int(body, "max_tokens")
        default = COMPLETIONS_DEFAULT_MAX_TOKENS
        if "max_tokens" not in body:
            requested = default
    for count in prompt_tokens:
        if count == 0:
            raise ApiError(400, "The decoder prompt cannot be empty")
        err = context_length_error(cfg.context_error_style, cfg.max_model_len, count, requested)
        if err is not None:
            raise err
    if requested is not None and requested < 1:
        raise ApiError(
            400,
            f"max_tokens must be at least 1, got {requested}. (parameter=max_tokens, value={requested})",
            param="max_tokens",
        )
    if requested is not None:
        output, finish = requested, "length"
    else:
        # vLLM would allow max_model_len - prompt; a real model stops at EOS far earlier.
        room = cfg.max_model_len - max(prompt_tokens)
        output, finish = min(default, room), ("stop" if default <= room else "length")
    return GenerationRequest(
        kind=kind,
        model=cfg.model,
        stream=stream,
        include_usage=include_usage,
        prompt_tokens=prompt_tokens,
        output_tokens=output,
        finish_reason=finish,
    )
