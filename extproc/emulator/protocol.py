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

from extproc.algorithm import endpoints
from extproc.emulator.engine_args import EmulatorConfig
from extproc.emulator.errors import ApiError, PromptSize, clamped_output, context_length_error
from extproc.emulator.tokens import TokenCounter

CHAT, COMPLETION, RESPONSES = "chat", "completion", "responses"

TEXT_PARTS = {"text": "text", "input_text": "text", "refusal": "refusal"}
MEDIA_PARTS = frozenset(
    {"image_url", "input_image", "image", "image_pil", "image_embeds", "input_audio", "audio_url", "video_url"}
)
COMPLETIONS_DEFAULT_MAX_TOKENS = endpoints.COMPLETIONS.default_max_tokens  # vLLM's (and OpenAI's) default


@dataclass(frozen=True)
class Output:
    """What one prompt's sequences generate: every one of its ``n`` samples the same length."""

    tokens: int
    finish_reason: str  # "length" when the budget was used up, "stop" for the EOS stand-in


@dataclass(frozen=True)
class GenerationRequest:
    """What the engine needs to serve one validated request."""

    kind: str  # CHAT | COMPLETION | RESPONSES
    model: str
    stream: bool
    include_usage: bool
    continuous_usage: bool
    prompts: tuple[PromptSize, ...]  # one entry per prompt (chat, responses: exactly one)
    outputs: tuple[Output, ...]  # one per prompt
    n: int = 1  # samples per prompt; choice index = prompt index * n + sample
    max_output_tokens: int | None = None  # as requested (echoed by the Responses API)

    @property
    def prompt_tokens(self) -> tuple[int, ...]:
        return tuple(p.tokens for p in self.prompts)

    def sequences(self) -> list[tuple[int, Output]]:
        """(prompt tokens, output) of every sequence, in choice-index order."""
        return [(p.tokens, out) for p, out in zip(self.prompts, self.outputs, strict=True) for _ in range(self.n)]


def validation_error(loc: str, kind: str, what: str, value: Any = None, ctx: str | None = None) -> ApiError:
    """FastAPI's request-validation 400 as vLLM 0.32 renders it: pydantic's error list in the message,
    ``type: "Bad Request"`` and the location as ``param``."""
    detail: dict[str, Any] = {"type": kind, "loc": loc, "msg": what}
    if value is not None:
        detail["input"] = _input_repr(value)
    if ctx is not None:
        detail["ctx"] = {"error": ctx}
    return ApiError(400, f"1 validation error:\n  {detail!r}", param=loc, type="Bad Request")


def _input_repr(value: Any) -> str:
    if isinstance(value, dict | list):
        return f"<{type(value).__name__} of {len(value)} items>"
    return str(value)


def invalid(param: str, what: str, kind: str = "value_error", value: Any = None) -> ApiError:
    return validation_error(f"body.{param}", kind, what, value)


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
    raise invalid(name, f"Input should be a valid integer, got {value!r}", "int_parsing", value)


def lax_bool(body: Mapping[str, Any], name: str) -> bool | None:
    value = body.get(name)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        return value.lower() in ("true", "1", "yes", "on")
    raise invalid(name, f"Input should be a valid boolean, got {value!r}", "bool_parsing", value)


def parse_json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise validation_error(f"body.{exc.pos}", "json_invalid", "JSON decode error", {}, str(exc)) from None
    if not isinstance(body, dict):
        raise validation_error(
            "body", "model_attributes_type", "Input should be a valid dictionary or object to extract fields from", body
        )
    return body


class PromptCounter:
    """Prompt token counts for chat messages and completion prompts under one config."""

    def __init__(self, cfg: EmulatorConfig, counter: TokenCounter) -> None:
        self.cfg = cfg
        self.bpe = counter
        self._chars = 0  # characters of prompt text counted since the last _start()

    def _start(self) -> None:
        self._chars = 0

    def _text(self, text: str) -> int:
        self._chars += len(text)
        return self.bpe.count(text)

    def _fixed(self, tokens: int) -> int:
        """Tokens the template or a media part adds, not counted from text (``PromptTokens`` lists them)."""
        return tokens

    def _json(self, value: Any) -> int:
        return self._text(orjson.dumps(value).decode())

    def _content(self, content: Any, where: str) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self._text(content)
        if not isinstance(content, list):
            raise invalid(where, "Input should be a valid string or a list of content parts")
        total = 0
        for i, part in enumerate(content):
            if isinstance(part, str):
                total += self._text(part)
                continue
            if not isinstance(part, dict):
                raise invalid(f"{where}.{i}", "Content part should be an object")
            kind = part.get("type")
            if kind in TEXT_PARTS:
                text = part.get(TEXT_PARTS[kind])
                if not isinstance(text, str):
                    raise invalid(f"{where}.{i}.{TEXT_PARTS[kind]}", "Input should be a valid string")
                total += self._text(text)
            elif kind in MEDIA_PARTS:
                total += self._fixed(self.cfg.image_tokens)
            else:
                raise invalid(f"{where}.{i}.type", f"Unknown part type: {kind!r}")
        return total

    def _message(self, role: str, content: Any, where: str) -> int:
        return self._fixed(self.cfg.template_tokens_per_message) + self._text(role) + self._content(content, where)

    def chat(self, body: Mapping[str, Any], generation_prompt: bool = True) -> PromptSize:
        """``generation_prompt`` False (``/tokenize``'s ``add_generation_prompt``) leaves only BOS of the
        per-request tokens."""
        messages = body.get("messages")
        if messages is None:
            raise invalid("messages", "Field required", "missing")
        if not isinstance(messages, list):
            raise invalid("messages", "Input should be a valid list")
        self._start()
        per_request = self.cfg.template_tokens_per_request
        total = self._fixed(per_request if generation_prompt else min(per_request, self.cfg.bos_tokens))
        for i, msg in enumerate(messages):
            where = f"messages.{i}"
            if not isinstance(msg, dict):
                raise invalid(where, "Input should be a valid dictionary")
            role = msg.get("role")
            if not isinstance(role, str):
                raise invalid(f"{where}.role", "Field required (a string)")
            total += self._message(role, msg.get("content"), f"{where}.content")
            for key in ("name", "tool_call_id"):
                value = msg.get(key)
                if value is not None:
                    if not isinstance(value, str):
                        raise invalid(f"{where}.{key}", "Input should be a valid string")
                    total += self._text(value)
            calls = msg.get("tool_calls")
            if calls is not None:
                if not isinstance(calls, list):
                    raise invalid(f"{where}.tool_calls", "Input should be a valid list")
                total += self._json(calls)
        total += self._tools(body, chat=True)
        return PromptSize(total, self._chars)

    def _tools(self, body: Mapping[str, Any], chat: bool) -> int:
        """Tool definitions as their JSON text (chat nests them under ``function``; Responses does not)."""
        tools = body.get("tools")
        if tools is None:
            return 0
        if not isinstance(tools, list):
            raise invalid("tools", "Input should be a valid list")
        for i, tool in enumerate(tools):
            if not chat:
                if not isinstance(tool, dict):
                    raise invalid(f"tools.{i}", "Input should be a valid dictionary")
                continue
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise invalid(f"tools.{i}.function.name", "Field required")
        return self._json(tools) if tools else 0

    def responses(self, body: Mapping[str, Any]) -> PromptSize:
        """The Responses API's ``instructions`` (a system message) and ``input`` (a string or items)."""
        self._start()
        # vLLM tokenizes a Responses prompt with add_special_tokens on (chat turns it off), so the
        # tokenizer's BOS comes on top of the template's own: one token more than the same chat.
        total = self._fixed(self.cfg.template_tokens_per_request + self.cfg.bos_tokens)
        instructions = body.get("instructions")
        if instructions is not None:
            if not isinstance(instructions, str):
                raise invalid("instructions", "Input should be a valid string")
            total += self._message("system", instructions, "instructions")
        items = body.get("input")
        if items is None:
            raise invalid("input", "Field required", "missing")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        if not isinstance(items, list):
            raise invalid("input", "Input should be a valid string or a list of items")
        for i, item in enumerate(items):
            where = f"input.{i}"
            if not isinstance(item, dict):
                raise invalid(where, "Input should be a valid dictionary")
            kind = item.get("type", "message")
            if kind == "message":
                role = item.get("role")
                if not isinstance(role, str):
                    raise invalid(f"{where}.role", "Field required (a string)")
                total += self._message(role, item.get("content"), f"{where}.content")
            elif kind == "function_call":
                total += self._fixed(self.cfg.template_tokens_per_message) + self._json(
                    {k: item.get(k) for k in ("name", "arguments")}
                )
            elif kind == "function_call_output":
                output = item.get("output")
                if not isinstance(output, str):
                    raise invalid(f"{where}.output", "Input should be a valid string")
                total += self._message("tool", output, f"{where}.output")
            elif kind == "reasoning":
                total += self._json(item.get("summary") or [])
            else:
                raise invalid(f"{where}.type", f"Unknown input item type: {kind!r}")
        total += self._tools(body, chat=False)
        return PromptSize(total, self._chars)

    def completion(self, body: Mapping[str, Any]) -> tuple[PromptSize, ...]:
        prompt = body.get("prompt")
        if prompt is None:
            raise invalid("prompt", "Field required", "missing")
        if isinstance(prompt, str):
            return (self._string_prompt(prompt),)
        if not isinstance(prompt, list) or not prompt:
            raise ApiError(400, "Either prompt or prompt_embeds must be provided and non-empty.")
        if all(isinstance(p, str) for p in prompt):
            return tuple(self._string_prompt(p) for p in prompt)
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

    def _string_prompt(self, text: str) -> PromptSize:
        self._start()
        return PromptSize(self._fixed(self.cfg.bos_tokens) + self._text(text), self._chars)

    def _ids(self, ids: list[int]) -> PromptSize:
        bad = self.bpe.check_ids(ids)
        if bad is not None:
            raise ApiError(400, f"Token id {bad} is out of vocabulary")
        return PromptSize(len(ids))


@dataclass(frozen=True)
class StreamFlags:
    stream: bool
    include_usage: bool  # a final usage chunk
    continuous_usage: bool = False  # usage so far on every chunk too (``continuous_usage_stats``)


def _stream_flags(body: Mapping[str, Any], kind: str) -> StreamFlags:
    stream = bool(lax_bool(body, "stream"))
    if kind == RESPONSES:
        return StreamFlags(stream, True)  # usage always comes in the final response.completed event
    options = body.get("stream_options")
    if options is None:
        return StreamFlags(stream, False)
    if not isinstance(options, dict):
        raise invalid("stream_options", "Input should be a valid dictionary")
    if not stream:
        raise ApiError(
            400, "Stream options can only be defined when `stream=True`. (parameter=stream_options)",
            param="stream_options",
        )  # fmt: skip
    include = bool(lax_bool(options, "include_usage") if "include_usage" in options else True)
    return StreamFlags(stream, include, include and bool(lax_bool(options, "continuous_usage_stats")))


def check_model(cfg: EmulatorConfig, body: Mapping[str, Any]) -> None:
    model = body.get("model")
    if model is None or model == "":
        return
    if not isinstance(model, str):
        raise invalid("model", "Input should be a valid string")
    if model != cfg.model:
        raise ApiError(
            404, f"The model `{model}` does not exist. Valid aliases: {cfg.model}.", param="model", type="NotFoundError"
        )


@dataclass(frozen=True)
class Requested:
    """The request's output limit (None when it sets none) and the field that set it, for messages."""

    tokens: int | None
    param: str


def _requested(kind: str, body: Mapping[str, Any]) -> Requested:
    """vLLM's precedence: ``max_completion_tokens`` when set (0 included), else ``max_tokens``."""
    if kind == CHAT:
        completion = lax_int(body, "max_completion_tokens")
        if completion is not None:
            return Requested(completion, "max_completion_tokens")
        return Requested(lax_int(body, "max_tokens"), "max_tokens")
    if kind == RESPONSES:
        return Requested(lax_int(body, "max_output_tokens"), "max_output_tokens")
    if "max_tokens" not in body:
        return Requested(COMPLETIONS_DEFAULT_MAX_TOKENS, "max_tokens")
    return Requested(lax_int(body, "max_tokens"), "max_tokens")


def _samples(kind: str, body: Mapping[str, Any]) -> int:
    n = lax_int(body, "n")
    if n is None or kind == RESPONSES:  # vLLM 0.32's Responses API accepts n and answers one output
        return 1
    if n < 1:
        raise invalid("n", f"Input should be greater than or equal to 1, got {n}")
    return n


def _output(cfg: EmulatorConfig, prompt: PromptSize, requested: int | None) -> Output:
    """A set limit is generated in full (like ``ignore_eos``), cut at the context since vLLM 0.32;
    none means the rest of the context."""
    if requested is not None:
        return Output(clamped_output(cfg.vllm_behaviour, cfg.max_model_len, prompt.tokens, requested), "length")
    room = cfg.max_model_len - prompt.tokens
    if cfg.eos_after_tokens and cfg.eos_after_tokens < room:
        return Output(cfg.eos_after_tokens, "stop")
    return Output(room, "length")


def parse_generation(
    kind: str, body: Mapping[str, Any], cfg: EmulatorConfig, prompts: PromptCounter
) -> GenerationRequest:
    """Validate a /v1/chat/completions, /v1/completions or /v1/responses body like vLLM."""
    check_model(cfg, body)
    flags = _stream_flags(body, kind)
    n = _samples(kind, body)
    if kind == CHAT:
        sizes: tuple[PromptSize, ...] = (prompts.chat(body),)
    elif kind == RESPONSES:
        sizes = (prompts.responses(body),)
    else:
        sizes = prompts.completion(body)
    requested = _requested(kind, body)
    for size in sizes:
        if size.tokens == 0:
            raise ApiError(400, "The decoder prompt cannot be empty")
        err = context_length_error(
            cfg.vllm_behaviour, cfg.max_model_len, size, requested.tokens, cfg.max_chars_per_token, requested.param
        )
        if err is not None:
            raise err
    outputs = tuple(_output(cfg, size, requested.tokens) for size in sizes)
    for out in outputs:
        # SamplingParams' own check, also met by a prompt of exactly max_model_len since 0.32 (no room left).
        if out.tokens < 1:
            raise ApiError(
                400,
                f"max_tokens must be at least 1, got {out.tokens}. (parameter=max_tokens, value={out.tokens})",
                param="max_tokens",
            )
    return GenerationRequest(
        kind=kind,
        model=cfg.model,
        stream=flags.stream,
        include_usage=flags.include_usage,
        continuous_usage=flags.continuous_usage,
        prompts=sizes,
        outputs=outputs,
        n=n,
        max_output_tokens=requested.tokens,
    )
