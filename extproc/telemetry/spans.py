"""The router's SERVER span: one per HTTP exchange, request headers to end of stream.

Attributes are gathered from the finished ``ExchangeRecord`` and set in one call when the span
ends, because nothing reads a span before it is exported and one locked bulk set is cheaper than
a dozen single ones on the hot path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from extproc.config import TelemetryConfig
from extproc.server.events import ExchangeRecord
from extproc.telemetry import names as n
from extproc.telemetry.propagation import extract_parent, inject, unsampled_parent

AttrValue = str | bool | int | float
TRUNCATED = "[truncated by budget-router]"  # ends the text part where captured content was cut
_DEFAULTS = TelemetryConfig()


class ExchangeSpans:
    def __init__(
        self,
        tracer: Tracer,
        capture_content: bool = False,
        parent_based: bool = False,
        content_max_bytes: int = _DEFAULTS.capture_content_max_bytes,
        provider: str = _DEFAULTS.provider_name,
    ) -> None:
        self.tracer = tracer
        self.capture_content = capture_content
        self.content_max_bytes = content_max_bytes  # an OTLP batch over the collector's limit loses every span in it
        self.provider = provider
        self.parent_based = parent_based  # the sampler follows the parent: unsampled parents need no span

    def start(
        self, record: ExchangeRecord, headers: Mapping[str, str], metadata: Sequence[tuple[str, str]]
    ) -> Span | str:
        """The span, or (parent-based sampling, parent not sampled) just the parent's trace id."""
        if self.parent_based:
            trace_id = unsampled_parent(headers, metadata)
            if trace_id is not None:
                return trace_id
        parent, links = extract_parent(headers, metadata)
        return self.tracer.start_span(n.SPAN_NAME, context=parent, kind=SpanKind.SERVER, links=links)

    @staticmethod
    def upstream_headers(span: Span) -> dict[str, str]:
        return inject(span)

    def finish(self, span: Span, record: ExchangeRecord) -> None:
        if span.is_recording():
            operation = n.OPERATIONS.get(record.endpoint)
            if operation:
                span.update_name(f"{operation} {record.model}" if record.model else operation)
            span.set_attributes(self.attributes(record))
            if record.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()

    def attributes(self, record: ExchangeRecord) -> dict[str, AttrValue]:
        """Span attributes for a record; prompt text only when the operator opted in.

        Every attribute costs ~2 µs to set and ~3 µs to encode for OTLP, so only what a reader of one
        trace needs is here (the rest is derivable: estimated prompt = total - output reserve).
        """
        a: dict[str, AttrValue] = {n.POOL: record.pool, n.REASON: record.reason}
        if record.detail:
            a[n.DETAIL] = record.detail
        if record.status:
            a[n.HTTP_STATUS] = record.status
        if record.attempts > 1:  # both attempts: pool (tried first) and served_pool (answered)
            a[n.ATTEMPTS] = record.attempts
            a[n.SERVED_POOL] = record.served_pool
        operation = n.OPERATIONS.get(record.endpoint)
        if operation is None:  # not parsed: the decision fields above are all there is
            a[n.URL_PATH] = record.path.split("?", 1)[0]
            return a
        a[n.GEN_AI_OPERATION] = operation
        a[n.ENDPOINT] = record.endpoint
        a[n.GEN_AI_PROVIDER] = self.provider
        if record.model:
            a[n.GEN_AI_REQUEST_MODEL] = record.model
        if not record.output_defaulted:
            a[n.GEN_AI_REQUEST_MAX_TOKENS] = record.output_reserve
        a[n.CATEGORY] = record.category
        a[n.TEXT_BYTES] = record.text_bytes
        a[n.EST_TOTAL_TOKENS] = record.estimated_total_tokens
        a[n.RATIO] = record.ratio
        a[n.OUTPUT_RESERVE] = record.output_reserve
        if record.stream:
            a[n.STREAM] = True
        if record.spilled:
            a[n.SPILLED] = True
        if record.engine_count:
            a[n.ENGINE_COUNT] = record.engine_count
        if record.pressure_source:
            a[n.SHORT_PRESSURE] = record.short_pressure
            a[n.LONG_PRESSURE] = record.long_pressure
            a[n.PRESSURE_SOURCE] = record.pressure_source
        if record.response_model:
            a[n.GEN_AI_RESPONSE_MODEL] = record.response_model
        if record.usage_source:
            a[n.USAGE_SOURCE] = record.usage_source
            if record.observation != "accepted":
                a[n.OBSERVATION] = record.observation
            if record.prompt_tokens is not None:
                a[n.GEN_AI_INPUT_TOKENS] = record.prompt_tokens
            if record.completion_tokens is not None:
                a[n.GEN_AI_OUTPUT_TOKENS] = record.completion_tokens
            if record.estimate_error_pct is not None:
                a[n.ESTIMATE_ERROR_PCT] = record.estimate_error_pct
            if record.context_truncated:
                a[n.CONTEXT_TRUNCATED] = True
        if self.capture_content and record.request_body:
            captured = input_messages(record.request_body, self.content_max_bytes)
            if captured is not None:
                a[n.GEN_AI_INPUT_MESSAGES], truncated = captured
                if truncated:
                    a[n.CONTENT_TRUNCATED] = True
        return a


# -- captured content in the GenAI conventions' message format -------------------------------------------
def _text(content: Any) -> dict[str, Any]:
    return {"type": "text", "content": content}


def _parts(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One chat message's content, tool calls and tool result as GenAI ``parts``."""
    content = message.get("content")
    if message.get("role") == "tool":
        return [{"type": "tool_call_response", "id": message.get("tool_call_id"), "response": content}]
    parts: list[dict[str, Any]] = []
    if isinstance(content, str):
        parts.append(_text(content))
    elif isinstance(content, list):
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in ("text", "input_text", "output_text"):  # chat; responses
                parts.append(_text(part.get("text")))
            elif kind == "image_url" and isinstance(part.get("image_url"), Mapping):
                parts.append({"type": "uri", "modality": "image", "uri": part["image_url"].get("url")})
            else:
                parts.append({"type": str(kind)})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, Mapping) else None
        if isinstance(fn, Mapping):
            args = fn.get("arguments")
            if isinstance(args, str):
                with contextlib.suppress(orjson.JSONDecodeError):  # not JSON: keep the text
                    args = orjson.loads(args)
            parts.append({"type": "tool_call", "id": call.get("id"), "name": fn.get("name"), "arguments": args})
    return parts


def _responses_item(item: Any) -> dict[str, Any]:
    """One Responses API ``input`` item: a message, a function call or a function call's output."""
    if not isinstance(item, Mapping):
        return {"role": None, "parts": []}
    kind = item.get("type")
    if kind == "function_call":
        call = {"id": item.get("call_id"), "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
        return {"role": "assistant", "parts": _parts({"tool_calls": [call]})}
    if kind == "function_call_output":
        return {"role": "tool", "parts": _parts({"role": "tool", "tool_call_id": item.get("call_id"),
                                                 "content": item.get("output")})}  # fmt: skip
    return {"role": item.get("role"), "parts": _parts(item)}


def _messages(data: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Chat ``messages``, completions ``prompt`` or responses ``instructions`` + ``input`` as GenAI messages."""
    messages = data.get("messages")
    if isinstance(messages, list):
        return [
            {"role": m.get("role"), "parts": _parts(m)} if isinstance(m, Mapping) else {"role": None, "parts": []}
            for m in messages
        ]
    if "input" in data:
        items = data["input"]
        out = [{"role": "system", "parts": [_text(data["instructions"])]}] if data.get("instructions") else []
        if isinstance(items, list):
            return out + [_responses_item(i) for i in items]
        return [*out, {"role": "user", "parts": [_text(items)]}]
    prompt = data.get("prompt")
    if prompt is None:
        return None
    prompts = prompt if isinstance(prompt, list) and not all(isinstance(p, int) for p in prompt) else [prompt]
    return [{"role": "user", "parts": [_text(p) for p in prompts]}]


def _cut(text: str, budget: int) -> str:
    """The longest prefix of ``text`` whose JSON encoding fits ``budget`` bytes, plus the marker."""
    budget -= len(orjson.dumps(TRUNCATED)) - 2
    prefix = text[: max(budget, 0)]
    while prefix and len(orjson.dumps(prefix)) - 2 > budget:
        prefix = prefix[: -max(1, (len(orjson.dumps(prefix)) - 2 - budget) // 4)]
    return prefix + TRUNCATED


def _capped(messages: list[dict[str, Any]], limit: int) -> tuple[str, bool]:
    """``messages`` as JSON of at most ``limit`` bytes: whole messages while they fit, then the first
    one that does not with its parts cut (a text part shortened and marked), and nothing after it."""
    whole = orjson.dumps(messages)
    if len(whole) <= limit:
        return whole.decode(), False
    kept: list[dict[str, Any]] = []
    for message in messages:
        if len(orjson.dumps([*kept, message])) <= limit:
            kept.append(message)
            continue
        parts: list[dict[str, Any]] = []
        for part in message["parts"]:
            trial = [*kept, {**message, "parts": [*parts, part]}]
            if len(orjson.dumps(trial)) <= limit:
                parts.append(part)
                continue
            stub = _text("")
            room = limit - len(orjson.dumps([*kept, {**message, "parts": [*parts, stub]}]))
            content = part.get("content") if part.get("type") == "text" else None
            if room >= len(TRUNCATED) + 2:
                parts.append(_text(_cut(content if isinstance(content, str) else "", room)))
            break
        if parts:
            kept.append({**message, "parts": parts})
        break
    return orjson.dumps(kept).decode(), True


def input_messages(body: bytes, limit: int) -> tuple[str, bool] | None:
    """``gen_ai.input.messages`` for a chat or completions body, capped at ``limit`` bytes, and whether
    it was cut; None when the body has no messages or prompt."""
    try:
        data: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    messages = _messages(data) if isinstance(data, dict) else None
    return None if messages is None else _capped(messages, limit)
