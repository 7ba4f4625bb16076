"""Hostile request bodies: valid (or nearly valid) JSON built to make reading a request expensive.

What an attacker, or a broken client, can send to the routed endpoints: many tiny parts, messages,
tools and tool calls; structures nested to orjson's depth limit in every place the router sizes
structured JSON; objects with huge key counts; huge ASCII, CJK and escaped strings; batch prompts and
token-id lists; and bodies just inside each of the router's bounds (``request_shape.MAX_*``), where the
router still reads everything and the cost is highest. ``benchmarks/hostile_bodies.py`` times the
routing decision on each; the flood test sends them through Envoy next to normal traffic.

Every body stays under ``max_bytes`` (default: the router's request limit, ``server.
max_request_body_bytes``, so each one is really read), and building one is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

CHAT, COMPLETIONS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/responses"
MODEL = "hostile-model"
DEPTH = 1000  # orjson accepts 1,024 levels; the router once recursed once per level


@dataclass(frozen=True, slots=True)
class HostileBody:
    name: str
    path: str
    body: bytes
    what: str  # one line for the report


def _dumps(doc: Any) -> bytes:
    return orjson.dumps(doc)


def _list(item: bytes, n: int) -> bytes:
    return b"[" + b",".join([item] * n) + b"]"


def _nested(depth: int) -> bytes:
    """``depth`` levels of alternating arrays and objects, as raw JSON (orjson cannot dump that deep)."""
    opens = [b"[" if i % 2 == 0 else b'{"n":' for i in range(depth)]
    closes = [b"]" if i % 2 == 0 else b"}" for i in reversed(range(depth))]
    return b"".join(opens) + b'"x"' + b"".join(closes)


# A template is a body with one hole (``@@``), the repeated items or the big value go there.
HOLE = b"@@"
_USER = b'{"model":"' + MODEL.encode() + b'","max_tokens":16,"messages":[{"role":"user","content":@@}]}'
_TOOLS = b'{"model":"' + MODEL.encode() + b'","max_tokens":16,"messages":[{"role":"user","content":"hi"}],"tools":@@}'
_CALLS = (b'{"model":"' + MODEL.encode() + b'","max_tokens":16,"messages":[{"role":"assistant","content":null,'
          b'"tool_calls":@@}]}')  # fmt: skip
_MESSAGES = b'{"model":"' + MODEL.encode() + b'","max_tokens":16,"messages":@@}'
_INPUT = b'{"model":"' + MODEL.encode() + b'","input":@@}'
_PROMPT = b'{"model":"' + MODEL.encode() + b'","max_tokens":4,"prompt":@@}'


def _fill(template: bytes, item: bytes, n: int, max_bytes: int, wrap: tuple[bytes, bytes] = (b"", b"")) -> bytes:
    """``template`` with ``n`` copies of ``item`` as a list in its hole, ``n`` cut to fit ``max_bytes``."""
    room = max_bytes - len(template) - len(wrap[0]) - len(wrap[1]) - 2
    n = max(1, min(n, (room + 1) // (len(item) + 1)))
    return template.replace(HOLE, wrap[0] + _list(item, n) + wrap[1])


def _string(template: bytes, char: bytes, max_bytes: int, n: int | None = None) -> bytes:
    """``template`` with one JSON string of ``char`` (its JSON spelling) repeated to fill ``max_bytes``."""
    fit = (max_bytes - len(template) - 2) // len(char)
    return template.replace(HOLE, b'"' + char * min(n or fit, fit) + b'"')


def text_parts(n: int) -> bytes:
    """A chat request of ``n`` one-letter text parts (the issue's 13.5 MB flood body at 500,000)."""
    return _fill(_USER, b'{"type":"text","text":"a"}', n, 1 << 40)


def corpus(max_bytes: int | None = None, limits: dict[str, int] | None = None) -> list[HostileBody]:
    """Every hostile body; ``limits`` (the router's ``MAX_*`` bounds) sizes the near-limit ones."""
    from extproc.algorithm import request_shape as rs
    from extproc.config import ServerConfig

    if max_bytes is None:
        max_bytes = ServerConfig().max_request_body_bytes

    lim = {
        "pieces": rs.MAX_PIECES,
        "values": rs.MAX_JSON_VALUES,
        "containers": rs.MAX_JSON_CONTAINERS,
        "separators": rs.MAX_JSON_SEPARATORS,
        **(limits or {}),
    }
    m = max_bytes
    cjk = "長".encode()
    tool = _dumps({"type": "function", "function": {"name": "t", "parameters": {"type": "object"}}})
    call = _dumps({"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}})
    piece = _dumps({"type": "text", "text": "長" * 200})
    near = lim["pieces"] - 8
    pieces = _list(piece, near)
    big_text = b'{"type":"text","text":"' + cjk * max(1, (m - len(pieces) - len(_USER) - 64) // 3) + b'"}'
    rows = [
        ("many_text_parts", CHAT, _fill(_USER, b'{"type":"text","text":"a"}', 500_000, m), "one-letter text parts"),
        ("many_messages", CHAT, _fill(_MESSAGES, b'{"role":"user","content":"a"}', 500_000, m), "tiny messages"),
        ("many_tools", CHAT, _fill(_TOOLS, tool, 200_000, m), "tool definitions"),
        ("many_tool_calls", CHAT, _fill(_CALLS, call, 200_000, m), "tool calls in one message"),
        ("many_images", CHAT, _fill(_USER, b'{"type":"image_url","image_url":{"url":"x"}}', 400_000, m),
         "image parts"),
        ("many_empty_objects", CHAT, _fill(_USER, b"{}", 4_000_000, m, (b'[{"type":"x","o":', b"}]")),
         "empty objects in one non-text part"),
        ("many_numbers", CHAT, _fill(_USER, b"1", 8_000_000, m, (b'[{"type":"x","v":', b"}]")),
         "numbers in one non-text part"),
        ("wide_object", CHAT, _USER.replace(HOLE, b'[{"type":"x",' + b",".join(
            b'"k%d":1' % i for i in range(min(1_000_000, m // 12))) + b"}]"), "keys in one non-text part"),
        ("nested_tools", CHAT, _TOOLS.replace(HOLE, b"[" + _nested(DEPTH) + b"]"), f"a tool {DEPTH} levels deep"),
        ("nested_tool_calls", CHAT, _CALLS.replace(HOLE, b"[" + _nested(DEPTH) + b"]"),
         f"a tool call {DEPTH} levels deep"),
        ("nested_part", CHAT, _USER.replace(HOLE, b'[{"type":"x","v":' + _nested(DEPTH) + b"}]"),
         f"a non-text part {DEPTH} levels deep"),
        ("nested_responses_item", RESPONSES, _INPUT.replace(HOLE, b'[{"type":"x","v":' + _nested(DEPTH) + b"}]"),
         f"a Responses item {DEPTH} levels deep"),
        ("many_responses_items", RESPONSES, _fill(_INPUT, b'{"type":"message","role":"user","content":"a"}',
                                                   400_000, m), "Responses input items"),
        ("huge_ascii", CHAT, _string(_USER, b"a", m), "one ASCII string"),
        ("huge_cjk", CHAT, _string(_USER, cjk, m), "one CJK string (3 bytes a character)"),
        ("huge_escaped", CHAT, _string(_USER, b"\\u0001", m), "one string of \\u0001 escapes"),
        ("huge_key", CHAT, _USER.replace(HOLE, b'[{"type":"x","' + b"k" * (m - len(_USER) - 32) + b'":1}]'),
         "one non-text part's key"),
        ("many_prompts", COMPLETIONS, _fill(_PROMPT, b'"a"', 3_000_000, m), "batch prompts"),
        ("token_ids", COMPLETIONS, _fill(_PROMPT, b"7", 8_000_000, m), "token ids"),
        ("near_piece_limit", CHAT, _USER.replace(HOLE, pieces), f"{near} CJK text parts (just under MAX_PIECES)"),
        ("near_value_limit", CHAT, _fill(_TOOLS, b"1", lim["values"] - 16, m, (b'[{"type":"function","v":', b"}]")),
         "a tool of just under MAX_JSON_VALUES values"),
        ("near_container_limit", CHAT, _fill(_USER, b'{"k":"v"}', lim["containers"] - 16, m,
                                             (b'[{"type":"x","o":', b"}]")),
         "small objects just under MAX_JSON_CONTAINERS"),
        ("near_separator_limit", COMPLETIONS, _fill(_PROMPT, b'"ab"', lim["separators"] - 16, m),
         "strings just under MAX_JSON_SEPARATORS"),
        ("near_limits_with_huge_text", CHAT, _USER.replace(HOLE, pieces[:-1] + b"," + big_text + b"]"),
         "parts near MAX_PIECES plus one CJK string filling the body"),
    ]  # fmt: skip
    out = [HostileBody(name, path, body, what) for name, path, body, what in rows]
    for b in out:
        if len(b.body) > max_bytes:
            raise AssertionError(f"hostile body {b.name} is {len(b.body)} bytes, over {max_bytes}")
    return out
