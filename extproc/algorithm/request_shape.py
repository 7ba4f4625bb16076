"""Reduce a parsed OpenAI request body to the few numbers the budget needs.

Only text that reaches the model's prompt is counted as text bytes; tool schemas and tool calls are
JSON-ish and tokenise differently, so they are their own "structured" category; images cost a fixed
number of tokens. The same measure is used when learning from usage, so the learned ratio absorbs
whatever the measure leaves out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from extproc.algorithm import endpoints
from extproc.algorithm.categories import Categorizer

# A shape names its API (``RequestShape.endpoint``); what the API means is its descriptor in
# ``endpoints``.
CHAT, COMPLETIONS, RESPONSES = endpoints.CHAT.name, endpoints.COMPLETIONS.name, endpoints.RESPONSES.name


# Every ShapeError reason (the ``unparseable`` detail a metric series is kept for, from 0).
SHAPE_ERROR_REASONS = (
    "bad_input", "bad_messages", "bad_prompt", "invalid_max_tokens", "not_object", "unknown_endpoint",
)  # fmt: skip
ENDPOINTS = endpoints.NAMES

# Bounded work per request: whatever a client sends, reading it costs the router a bounded amount of
# CPU (one request once held the only event loop for 1.8 s). Past a limit a request is too complex
# to read: it takes the safe route (long) unread, named by which limit it hit. Real requests stay far
# below: a 500-message agent conversation with 128 tools has ~2,000 pieces and ~8,000 JSON values,
# and a prompt with 10,000 brace bytes or 100,000 commas is over 100 KB of dense text, which no 8K
# short pool holds anyway. The raw counts come first (one C pass, ~0.3 ms per MiB), because parsing
# itself is what a body of 500,000 tiny objects makes slow.
MAX_JSON_CONTAINERS = 10_000  # '{' and '[' bytes in the raw body (counted before it is parsed)
MAX_JSON_SEPARATORS = 100_000  # ',' bytes in the raw body
MAX_PIECES = 4_096  # messages, content parts, Responses items, tool definitions, tool calls, prompts
MAX_JSON_VALUES = 20_000  # values walked to size the structured parts (tool schemas, calls, other parts)
TOO_COMPLEX_DETAILS = ("too_many_containers", "too_many_separators", "too_many_pieces", "too_many_values")
_NOT_STRUCTURAL = bytes(b for b in range(256) if b not in b"{[,")


class ShapeError(ValueError):
    """The body is not a request we can estimate; ``reason`` is a short metric-friendly label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class TooComplex(ShapeError):
    """The body exceeds a bound on the work of reading it; ``reason`` names the bound
    (``TOO_COMPLEX_DETAILS``). The caller routes it long unread (``dispatch.TOO_COMPLEX``)."""


def check_structure(raw: bytes) -> None:
    """Raise ``TooComplex`` for a body that would be costly to parse at all (before ``orjson.loads``):
    too many container or separator bytes. Braces and commas inside strings count too, so the
    limits are set where even text-only bodies are far over any short pool."""
    marks = raw.translate(None, _NOT_STRUCTURAL)
    if len(marks) <= MAX_JSON_CONTAINERS:
        return  # within both limits
    if marks.count(b"{") + marks.count(b"[") > MAX_JSON_CONTAINERS:
        raise TooComplex("too_many_containers", f"more than {MAX_JSON_CONTAINERS} '{{' and '[' in the body")
    if marks.count(b",") > MAX_JSON_SEPARATORS:
        raise TooComplex("too_many_separators", f"more than {MAX_JSON_SEPARATORS} ',' in the body")


class _Work:
    """What is left of one request's reading budget (pieces and structured values)."""

    __slots__ = ("pieces", "values")

    def __init__(self) -> None:
        self.pieces = MAX_PIECES
        self.values = MAX_JSON_VALUES

    def take(self, pieces: int) -> None:
        self.pieces -= pieces
        if self.pieces < 0:
            raise TooComplex("too_many_pieces", f"more than {MAX_PIECES} messages, parts, items and tools")


@dataclass(frozen=True, slots=True)
class RequestShape:
    endpoint: str
    category: str
    text_bytes: int
    structured_bytes: int = 0
    images: int = 0
    messages: int = 0
    tool_items: int = 0
    output_tokens: int | None = None  # requested max output; None when the client set none
    stream: bool = False
    client_include_usage: bool = False
    model: str | None = None
    known_prompt_tokens: int | None = None  # /v1/completions with token ids: exact (the longest prompt's)
    # Sequences the engine runs for the request: prompts of a batch times ``n`` completions of each.
    # Each is its own sequence with the full output limit; ``usage`` sums them all.
    prompts: int = 1
    choices: int = 1
    # References into the parsed body (nothing copied): the v2 estimator counts character classes of
    # ``texts``, the exact band serialises ``structured`` (tool definitions, calls, other parts) only
    # when it fires.
    texts: tuple[str, ...] = ()
    structured: tuple[Any, ...] = ()
    # Batch /v1/completions: every prompt is its own sequence, so the longest one (text_bytes) decides
    # the route, but usage.prompt_tokens counts all of them: learning pairs it with all the bytes.
    learn_text_bytes: int | None = None


def _nbytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))


def _json_len(value: Any, work: _Work) -> int:
    """Approximate serialized size of a structured value without serializing it twice.

    Iterative, never recursive (a client's nesting must not reach Python's recursion limit: orjson
    accepts 1,024 levels), and each value walked spends ``work``: past ``MAX_JSON_VALUES`` the
    request is too complex to size. Containers are expanded in place; strings and scalars (what
    orjson produces) are sized where they are found, without a trip through the stack."""
    total = 0
    left = work.values  # the value itself is counted as an item of a one-item container
    stack: list[Any] = [[value]]
    total -= 3  # ... whose brackets and comma are not part of the value
    while stack:
        v = stack.pop()
        kind = type(v)
        if kind is dict or (kind is not list and isinstance(v, Mapping)):
            total += 2
            items: Any = v.values()
            for k in v:
                total += (len(k) if type(k) is str and k.isascii() else _nbytes(str(k))) + 4  # quotes, colon, comma
        elif kind is list or kind is tuple:
            total += 2 + len(v)  # brackets and commas
            items = v
        else:
            items = (v,)
        left -= len(items)
        if left < 0:
            raise TooComplex("too_many_values", f"more than {MAX_JSON_VALUES} JSON values in structured parts")
        for item in items:
            kind = type(item)
            if kind is str:
                total += (len(item) if item.isascii() else _nbytes(item)) + 2
            elif kind is dict or kind is list or kind is tuple or isinstance(item, Mapping):
                stack.append(item)
            else:
                total += len(str(item))
    work.values = left
    return total


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})


def client_asked_for_usage(opts: Any) -> bool:
    """Whether vLLM would send the usage chunk for these ``stream_options``.

    vLLM's ``include_usage`` defaults to true once ``stream_options`` is an object, and pydantic's
    lax booleans accept 1 and strings such as "true"/"yes"; anything else means no usage chunk.
    """
    if not isinstance(opts, Mapping):
        return False
    value = opts.get("include_usage", True)
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in _TRUE


def output_tokens(body: Mapping[str, Any], keys: tuple[str, ...] = endpoints.CHAT.output_limit_keys) -> int | None:
    """``max_completion_tokens`` wins over ``max_tokens`` (as in vLLM); absent or null gives None.

    Anything vLLM would reject (bool, negative, zero, fractional, string) raises ShapeError so the
    request takes the safe route and the backend's own 400 reaches the client.
    """
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ShapeError("invalid_max_tokens", f"{key} must be an integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise ShapeError("invalid_max_tokens", f"{key} must be an integer")
            value = int(value)
        if value < 1:
            raise ShapeError("invalid_max_tokens", f"{key} must be at least 1")
        return value
    return None


_CHAT_TEXT_PARTS = frozenset({"text"})
_RESPONSE_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})


def _content(
    content: Any, texts: list[str], text_types: frozenset[str], reason: str, sink: list[Any], work: _Work
) -> tuple[int, int]:
    """Add a message's text to ``texts`` and its structured parts to ``sink``; return (structured
    bytes, images) of its other parts."""
    if isinstance(content, str):
        texts.append(content)
        return 0, 0
    if content is None:
        return 0, 0
    if not isinstance(content, list):
        raise ShapeError(reason, "message content must be a string, a list of parts or null")
    work.take(len(content))
    structured = images = 0
    for part in content:
        if not isinstance(part, Mapping):
            raise ShapeError(reason, "content parts must be objects")
        kind = part.get("type")
        if kind in text_types and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _IMAGE_PARTS:
            images += 1
        else:
            structured += _json_len(part, work)
            sink.append(part)
    return structured, images


def _chat_parts(messages: Any, sink: list[Any], work: _Work) -> tuple[list[str], int, int, int]:
    if not isinstance(messages, list) or not messages:
        raise ShapeError("bad_messages", "messages must be a non-empty list")
    work.take(len(messages))
    texts: list[str] = []
    structured = images = tools = 0
    for msg in messages:
        if not isinstance(msg, Mapping):
            raise ShapeError("bad_messages", "each message must be an object")
        part_bytes, part_images = _content(msg.get("content"), texts, _CHAT_TEXT_PARTS, "bad_messages", sink, work)
        structured, images = structured + part_bytes, images + part_images
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            work.take(len(calls))
            tools += len(calls)
            structured += _json_len(calls, work)
            sink.append(calls)
    return texts, structured, images, tools


def _response_parts(body: Mapping[str, Any], sink: list[Any], work: _Work) -> tuple[list[str], int, int, int, int]:
    """Text, structured bytes, images, tool items and messages of a Responses API request.

    ``instructions`` is a system message; ``input`` a string (one user message) or a list of items:
    messages (string or typed-part content) count as text, function calls and their outputs, reasoning
    and file parts as structured JSON, image parts at the fixed image cost.
    """
    texts: list[str] = []
    structured = images = tools = messages = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
        messages += 1
    elif instructions is not None:
        raise ShapeError("bad_input", "instructions must be a string")
    items = body.get("input")
    if isinstance(items, str):
        return [*texts, items], 0, 0, 0, messages + 1
    if not isinstance(items, list) or not items:
        raise ShapeError("bad_input", "input must be a string or a non-empty list of items")
    work.take(len(items))
    for item in items:
        if not isinstance(item, Mapping):
            raise ShapeError("bad_input", "each input item must be an object")
        kind = item.get("type", "message")
        if kind != "message":
            tools += kind in ("function_call", "function_call_output")
            structured += _json_len(item, work)
            sink.append(item)
            continue
        messages += 1
        part_bytes, part_images = _content(item.get("content"), texts, _RESPONSE_TEXT_PARTS, "bad_input", sink, work)
        structured, images = structured + part_bytes, images + part_images
    return texts, structured, images, tools, messages


def _tool_definitions(body: Mapping[str, Any], work: _Work) -> tuple[int, int]:
    """(count, structured bytes) of the ``tools`` list."""
    tool_defs = body.get("tools")
    if isinstance(tool_defs, list):
        work.take(len(tool_defs))
        return len(tool_defs), _json_len(tool_defs, work)
    return 0, 0


def choices(body: Mapping[str, Any], key: str) -> int:
    """``n``: completions per prompt. A value vLLM would reject counts as 1: the request keeps its
    route and the engine's own 400 reaches the client."""
    value = body.get(key) if key else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return 1
    return value


def _token_ids(value: Any) -> bool:
    """A non-empty list of token ids (integers, not booleans)."""
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def completion_prompts(prompt: Any) -> tuple[list[str], list[int]]:
    """The prompts of a /v1/completions request: (texts, token counts of token-id prompts); exactly
    one of the two is non-empty. vLLM takes a string, a list of strings, a list of token ids or a
    list of such lists; anything else raises ShapeError."""
    if isinstance(prompt, str):
        return [prompt], []
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return list(prompt), []
        if _token_ids(prompt):
            return [], [len(prompt)]
        if all(_token_ids(p) for p in prompt):
            return [], [len(p) for p in prompt]
    raise ShapeError("bad_prompt", "prompt must be a string, a list of strings, token ids or lists of token ids")


def _model(body: Mapping[str, Any]) -> str | None:
    model = body.get("model")
    return model if isinstance(model, str) else None


def _templated_shape(
    endpoint: str,
    body: Mapping[str, Any],
    categorizer: Categorizer,
    parts: tuple[list[str], int, int, int, int],
    out: int | None,
    include_usage: bool,
    sink: list[Any],
    work: _Work,
) -> RequestShape:
    """Chat and Responses requests: message text, structured parts and tools through a chat template."""
    texts, structured, images, tools, messages = parts
    n_defs, def_bytes = _tool_definitions(body, work)
    structured += def_bytes
    if n_defs:
        sink.append(body["tools"])
    text = texts[0] if len(texts) == 1 else "\n".join(texts)
    has_text = bool(text) or not structured
    return RequestShape(
        endpoint=endpoint,
        category=categorizer.classify(text) if has_text else categorizer.structured(),
        text_bytes=sum(_nbytes(t) for t in texts),
        structured_bytes=structured,
        images=images,
        messages=messages,
        tool_items=tools + n_defs,
        output_tokens=out,
        stream=body.get("stream") is True,
        client_include_usage=include_usage,
        model=_model(body),
        texts=tuple(texts),
        structured=tuple(sink),
        choices=choices(body, endpoints.REGISTRY[endpoint].choices_key),
    )


def shape_from_body(endpoint: str, body: Any, categorizer: Categorizer) -> RequestShape:
    if not isinstance(body, Mapping):
        raise ShapeError("not_object", "request body must be a JSON object")
    api = endpoints.named(endpoint)
    if api is None:
        raise ShapeError("unknown_endpoint", f"not a routed endpoint: {endpoint}")
    out = output_tokens(body, api.output_limit_keys)
    # An API whose streams always carry usage (Responses) needs nothing asked for.
    include_usage = client_asked_for_usage(body.get("stream_options")) if api.usage_on_request else True
    sink: list[Any] = []
    work = _Work()
    if api is endpoints.RESPONSES:
        parts = _response_parts(body, sink, work)
        return _templated_shape(RESPONSES, body, categorizer, parts, out, include_usage, sink, work)
    stream = body.get("stream") is True
    model = _model(body)
    if api is endpoints.CHAT:
        parts = (*_chat_parts(body.get("messages"), sink, work), len(body["messages"]))
        return _templated_shape(CHAT, body, categorizer, parts, out, include_usage, sink, work)
    if api is endpoints.COMPLETIONS:
        texts, id_counts = completion_prompts(body.get("prompt"))
        work.take(len(texts) + len(id_counts))  # each prompt is sized (or its token ids counted)
        known = max(id_counts) if id_counts else None  # each prompt is its own sequence: the longest decides
        learn_bytes = None
        text = ""
        if texts:
            sizes = [_nbytes(p) for p in texts]
            text = texts[max(range(len(texts)), key=sizes.__getitem__)]
            learn_bytes = sum(sizes) if len(texts) > 1 else None
        return RequestShape(
            endpoint=COMPLETIONS,
            category=categorizer.classify(text),
            text_bytes=_nbytes(text),
            output_tokens=out,
            stream=stream,
            client_include_usage=include_usage,
            model=model,
            known_prompt_tokens=known,
            prompts=len(texts) or len(id_counts),
            choices=choices(body, api.choices_key),
            texts=(text,) if text else (),
            learn_text_bytes=learn_bytes,
        )
    raise ShapeError("unknown_endpoint", f"not a routed endpoint: {endpoint}")
