"""Bounded work per request: whatever the body, reading it costs a bounded amount of router CPU.

No recursion on client data (nesting to orjson's 1,024-level limit in every structured place is
sized, not a RecursionError), each bound (``request_shape.MAX_*``) holds exactly at its limit and one
past it is ``TooComplex``, the exchange routes such bodies long (reason ``too_complex``) unread, and
the bytes all exchanges hold at once stay within ``server.max_held_body_bytes``. The CPU each costs
is a benchmark (``benchmarks/hostile_bodies.py``), not a timed test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from extproc.algorithm import Categorizer, shape_from_body
from extproc.algorithm import request_shape as rs
from extproc.algorithm.dispatch import LONG, TOO_COMPLEX
from extproc.config import ConfigError, load_config, with_options
from extproc.server.exchange import Exchange, RouterRuntime
from extproc.workload.hostile import DEPTH, corpus
from tests.envoy_play import request_body, request_headers, response_body, response_headers

C = Categorizer()


def reference_json_len(value: Any) -> int:
    """The former recursive sizing, the reference the iterative walk must equal."""
    if isinstance(value, str):
        return len(value.encode("utf-8", "surrogatepass")) + 2
    if isinstance(value, Mapping):
        keys = sum(len(str(k).encode("utf-8", "surrogatepass")) + 4 for k in value)
        return 2 + keys + sum(reference_json_len(v) for v in value.values())
    if isinstance(value, list | tuple):
        return 2 + sum(reference_json_len(v) + 1 for v in value)
    return len(str(value))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner, max_size=5),
    max_leaves=40,
)


@given(JSON)
def test_iterative_sizing_equals_the_recursive_one(value: Any) -> None:
    assert rs._json_len(value, rs._Work()) == reference_json_len(value)


@pytest.mark.parametrize("body", [b for b in corpus() if b.name.startswith("nested_")], ids=lambda b: b.name)
def test_nesting_at_orjsons_limit_is_sized_not_a_recursion_error(body) -> None:
    endpoint = "responses" if body.path.endswith("responses") else "chat"
    shape = shape_from_body(endpoint, orjson.loads(body.body), C)
    assert shape.structured_bytes > 2 * DEPTH


def parts(n: int) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}] * (n - 1)}]}


def test_pieces_hold_at_the_limit_and_not_one_past_it() -> None:
    assert shape_from_body("chat", parts(rs.MAX_PIECES), C).text_bytes == rs.MAX_PIECES - 1
    with pytest.raises(rs.TooComplex) as err:
        shape_from_body("chat", parts(rs.MAX_PIECES + 1), C)
    assert err.value.reason == "too_many_pieces"
    tools = {"messages": [{"role": "user", "content": "hi"}], "tools": [{}] * rs.MAX_PIECES}
    with pytest.raises(rs.TooComplex):
        shape_from_body("chat", tools, C)


def values(n: int) -> dict[str, Any]:
    """A tool whose JSON has exactly ``n`` values: the tools list, the tool object, its list, numbers."""
    return {"messages": [{"role": "user", "content": "hi"}], "tools": [{"v": [1] * (n - 3)}]}


def test_structured_values_hold_at_the_limit_and_not_one_past_it() -> None:
    assert shape_from_body("chat", values(rs.MAX_JSON_VALUES), C).tool_items == 1
    with pytest.raises(rs.TooComplex) as err:
        shape_from_body("chat", values(rs.MAX_JSON_VALUES + 1), C)
    assert err.value.reason == "too_many_values"


@pytest.mark.parametrize(
    ("mark", "limit", "reason"),
    [(b"{", rs.MAX_JSON_CONTAINERS, "too_many_containers"), (b"[", rs.MAX_JSON_CONTAINERS, "too_many_containers"),
     (b",", rs.MAX_JSON_SEPARATORS, "too_many_separators")],
)  # fmt: skip
def test_raw_marks_hold_at_the_limit_and_not_one_past_it(mark: bytes, limit: int, reason: str) -> None:
    rs.check_structure(b"x" * 100 + mark * limit)
    with pytest.raises(rs.TooComplex) as err:
        rs.check_structure(mark * (limit + 1))
    assert err.value.reason == reason


def runtime(**server: Any) -> RouterRuntime:
    cfg = with_options(load_config(env={}), calibration={"state_file": ""}, server=server)
    return RouterRuntime.from_config(cfg)


def decide(rt: RouterRuntime, raw: bytes, path: str = "/v1/chat/completions") -> Exchange:
    ex = Exchange(rt)
    ex.handle(request_headers(path))
    ex.handle(request_body(raw))
    return ex


@pytest.mark.parametrize(
    "name", ["many_text_parts", "many_empty_objects", "many_numbers", "near_separator_limit", "token_ids"]
)
def test_the_exchange_routes_a_too_complex_body_long_with_its_bound(name: str) -> None:
    [body] = [b for b in corpus() if b.name == name]
    ex = decide(runtime(), body.body, body.path)
    decision = ex.record.decision
    assert decision is not None
    assert (decision.pool, decision.reason) == (LONG, TOO_COMPLEX)
    assert decision.detail in rs.TOO_COMPLEX_DETAILS
    ex.close()


def chat(nbytes: int) -> bytes:
    return orjson.dumps({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "a" * nbytes}]})


def test_bodies_held_at_once_are_bounded_and_given_back() -> None:
    rt = runtime(max_request_body_bytes=64 * 1024, max_held_body_bytes=100 * 1024)
    first = decide(rt, chat(60 * 1024))
    assert first.record.decision is not None and first.record.decision.reason != TOO_COMPLEX
    second = decide(rt, chat(60 * 1024))  # does not fit next to the first: long, unread, counted
    assert second.record.decision is not None
    assert (second.record.decision.pool, second.record.decision.reason) == (LONG, TOO_COMPLEX)
    assert second.record.decision.detail == "body_budget" and rt.bodies.refused == 1
    small = decide(rt, chat(1024))  # what still fits is read
    assert small.record.decision is not None and small.record.decision.reason != TOO_COMPLEX
    for ex in (first, second, small):
        ex.close()
    assert rt.bodies.held == 0
    third = decide(rt, chat(60 * 1024))  # the first's bytes came back
    assert third.record.decision is not None and third.record.decision.reason != TOO_COMPLEX
    third.close()


def test_buffered_responses_count_against_the_same_budget() -> None:
    rt = runtime(max_request_body_bytes=64 * 1024, max_held_body_bytes=80 * 1024)
    ex = decide(rt, chat(1024))
    ex.handle(response_headers())
    held = rt.bodies.held
    ex.handle(response_body(b'{"usage":' + b" " * (90 * 1024) + b'{"prompt_tokens":9}}'))
    assert rt.bodies.held == held and rt.bodies.refused == 1  # too big to hold: not read
    ex.close()
    assert rt.bodies.held == 0


def test_held_bytes_below_one_request_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"server\.max_held_body_bytes"):
        load_config(env={"BUDGET_ROUTER_SERVER_MAX_HELD_BODY_BYTES": "1024"})
