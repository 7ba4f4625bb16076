"""Fuzzing the two parsers that see untrusted bytes: the request-body scanner and the SSE reassembler.

Hypothesis generates request-like JSON (every field with wrong types, odd sizes and encodings), raw
and mutated bytes, arbitrary headers, and SSE streams cut at arbitrary points. Invariants:

* the body scanner (``orjson.loads`` + ``shape_from_body`` + ``BudgetRouter.route``) raises nothing
  but its two documented errors, and always decides short or long;
* a whole ``Exchange`` never raises, always sets the routing header to short or long, routes long
  whenever the body cannot be read, never answers in the router's own name, only rewrites a body to
  ask for usage, and leaves nothing in flight once closed;
* the SSE scanner never raises, reports the last usage in the stream, and with stripping on emits
  exactly the input minus the usage-only events, however the stream is cut.

Every test has a fixed example budget and no deadline, so the whole module stays within seconds in
CI. atheris (coverage-guided, libFuzzer) runs the body scanner for a fixed number of runs when it is
installed, in a child process because libFuzzer exits the process it runs in.
"""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from extproc.algorithm import BudgetRouter, ShapeError, shape_from_body
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.request_shape import CHAT, COMPLETIONS
from extproc.config import load_config
from extproc.server.exchange import Exchange, RouterRuntime
from extproc.server.sse import SseUsageScanner
from tests.envoy_play import request_body, request_headers, response_body, response_headers

BUDGET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUTER = BudgetRouter()
POOL_HEADER = "x-budget-pool"
OUR_HEADERS = {POOL_HEADER, "x-budget-reason", "content-length", "accept-encoding"}

# -- request bodies ------------------------------------------------------------------------------------
scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False) | st.text(max_size=40)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)  # fmt: skip
token_limits = (
    st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.booleans() | st.none() | st.text(max_size=6)
)
parts = st.fixed_dictionaries(
    {"type": st.sampled_from(["text", "image_url", "input_image", "input_audio", "tool_result", 7])},
    optional={"text": st.text(max_size=200) | scalars, "image_url": json_values},
) | json_values  # fmt: skip
contents = st.text(max_size=400) | st.none() | st.lists(parts, max_size=4) | scalars
messages = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool"]) | scalars},
    optional={"content": contents, "tool_calls": st.lists(json_values, max_size=3) | scalars, "name": scalars},
) | json_values  # fmt: skip
request_docs = st.fixed_dictionaries(
    {},
    optional={
        "model": st.text(max_size=20) | scalars,
        "messages": st.lists(messages, max_size=5) | json_values,
        "prompt": st.text(max_size=300) | st.lists(st.text(max_size=50), max_size=3)
        | st.lists(st.integers(-5, 200_000), max_size=20) | json_values,
        "max_tokens": token_limits,
        "max_completion_tokens": token_limits,
        "stream": st.booleans() | scalars,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": scalars}) | json_values,
        "tools": st.lists(json_values, max_size=3) | scalars,
        "n": scalars,
    },
)  # fmt: skip

# Mostly valid requests with one odd field or two: reach the routing and rewriting code often.
plausible_limits = st.integers(1, 10_000) | token_limits
plausible_docs = st.fixed_dictionaries(
    {
        "model": st.just("m"),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.just("user"), "content": st.text(max_size=200) | contents}),
            min_size=1,
            max_size=3,
        ),
        "stream": st.booleans(),
    },
    optional={
        "max_tokens": plausible_limits,
        "max_completion_tokens": plausible_limits,
        "stream_options": st.none() | st.fixed_dictionaries({}, optional={"include_usage": scalars}) | scalars,
    },
)


@st.composite
def mutated(draw: st.DrawFn, docs: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """Valid JSON, then maybe cut short, spliced with random bytes, or wrapped in garbage."""
    raw = orjson.dumps(draw(docs))
    how = draw(st.sampled_from(["as_is", "as_is", "as_is", "truncate", "splice", "prefix", "number"]))
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if how == "splice":
        at = draw(st.integers(0, len(raw)))
        return raw[:at] + draw(st.binary(min_size=1, max_size=8)) + raw[at:]
    if how == "number" and raw.endswith(b"}") and len(raw) > 2:  # literals orjson.dumps cannot write
        key = draw(st.sampled_from([b"max_tokens", b"max_completion_tokens"]))
        number = draw(st.sampled_from([b"123456789012345678901234567890", b"-1e300", b"1e400", b"4.0e0", b"-0"]))
        return raw[:-1] + b',"' + key + b'":' + number + b"}"
    if how == "prefix":
        return draw(st.sampled_from([b"\xef\xbb\xbf", b" \n\t", b"[", b"\x00"])) + raw
    return raw


bodies = (
    mutated(request_docs)
    | mutated(plausible_docs)
    | st.binary(max_size=300)
    | st.builds(lambda n: b"[" * n + b"]" * n, st.integers(0, 5000))
)


def unreadable(endpoint: str, raw: bytes) -> bool:
    try:
        shape_from_body(endpoint, orjson.loads(raw), ROUTER.categorizer)
    except (orjson.JSONDecodeError, ShapeError):
        return True
    return False


@BUDGET
@given(raw=bodies, endpoint=st.sampled_from([CHAT, COMPLETIONS]), pressure=st.floats(0, 10))
def test_body_scanner_raises_only_its_own_errors_and_always_decides(raw: bytes, endpoint: str, pressure: float) -> None:
    try:
        shape = shape_from_body(endpoint, orjson.loads(raw), ROUTER.categorizer)
    except (orjson.JSONDecodeError, ShapeError):
        return
    est, decision = ROUTER.decide(shape, pressure)
    assert decision.pool in (SHORT, LONG)
    assert est.total >= est.prompt_tokens >= 0
    if est.total > ROUTER.policy.short_context:
        assert decision.pool == LONG


# -- whole exchanges ------------------------------------------------------------------------------------
header_names = st.sampled_from(
    [POOL_HEADER, "x-budget-reason", "content-encoding", "content-type", "traceparent", "x-request-id"]
) | st.from_regex(r"\A[a-z][a-z0-9-]{0,15}\Z")  # fmt: skip
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), max_size=40)
CFG = load_config(
    env={}, overrides={"calibration": {"state_file": ""}, "routing": {"reason_header": "x-budget-reason"}}
)


def set_headers(common: Any) -> dict[str, str]:
    return {o.header.key: o.header.raw_value.decode() for o in common.header_mutation.set_headers}


@st.composite
def sse_or_json(draw: st.DrawFn) -> tuple[int, str, list[bytes]]:
    status = draw(st.sampled_from([200, 200, 400, 413, 500, 503]))
    ctype = draw(st.sampled_from(["application/json", "text/event-stream", "text/plain"]))
    body = draw(st.binary(max_size=200) | st.just(b'data: {"choices":[],"usage":{"prompt_tokens":12}}\n\n'))
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=4)))
    bounds = [0, *cuts, len(body)]
    return status, ctype, [body[a:b] for a, b in itertools.pairwise(bounds)]


@BUDGET
@given(
    raw=mutated(plausible_docs) | bodies,
    method=st.just("POST") | st.sampled_from(["GET", "PUT", "DELETE"]),
    path=st.sampled_from(["/v1/chat/completions", "/v1/completions", "/v1/chat/completions/?x=1"])
    | st.sampled_from(["/v1/models", "/v1/embeddings"])
    | st.text(max_size=30),
    headers=st.dictionaries(header_names, header_values, max_size=5),
    response=sse_or_json(),
)
def test_exchange_survives_anything(
    raw: bytes, method: str, path: str, headers: dict[str, str], response: tuple[int, str, list[bytes]]
) -> None:
    rt = RouterRuntime.from_config(CFG)
    ex = Exchange(rt)
    answers = [ex.handle(request_headers(path, method, headers, eos=not raw))]
    assert POOL_HEADER in answers[0].request_headers.response.header_mutation.remove_headers
    if not ex.done:
        answers.append(ex.handle(request_body(raw)))
        common = answers[-1].request_body.response
        routed = set_headers(common)
        assert routed[POOL_HEADER] in ("short", "long") and set(routed) <= OUR_HEADERS
        if common.HasField("body_mutation"):
            check_rewrite(raw, common.body_mutation.body)
    record = ex.record
    assert record.pool in (SHORT, LONG)
    route = path.split("?", 1)[0].rstrip("/")
    endpoint = CHAT if route.endswith("/chat/completions") else COMPLETIONS if route.endswith("/completions") else ""
    encoded = headers.get("content-encoding", "identity").lower() not in ("identity", "")
    if method != "POST" or not endpoint or not raw or encoded or unreadable(endpoint, raw):
        assert (record.pool, record.reason) in ((LONG, "unparseable"), (LONG, "no_body"))
    if not ex.done:
        status, ctype, chunks = response
        answers.append(ex.handle(response_headers(status, ctype)))
        answers += [ex.handle(response_body(c, eos=i == len(chunks) - 1)) for i, c in enumerate(chunks)]
    ex.close()
    assert all(a.WhichOneof("response") != "immediate_response" for a in answers)
    assert rt.router.pressure.in_flight == {SHORT: 0, LONG: 0}


@BUDGET
@given(doc=plausible_docs, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
def test_exchange_rewrites_a_body_only_to_ask_for_usage(doc: dict[str, Any], path: str) -> None:
    if path == "/v1/completions":
        doc = {**doc, "prompt": "Say hello."}
    raw = orjson.dumps({**doc, "stream": True})
    ex = Exchange(RouterRuntime.from_config(CFG))
    ex.handle(request_headers(path))
    common = ex.handle(request_body(raw)).request_body.response
    if common.HasField("body_mutation"):
        check_rewrite(raw, common.body_mutation.body)
        assert ex.record.include_usage_injected
    ex.close()


def check_rewrite(raw: bytes, new: bytes) -> None:
    """The only rewrite allowed: the same request, asking for the usage chunk."""
    before, after = orjson.loads(raw), orjson.loads(new)
    sent, asked = before.pop("stream_options", None), after.pop("stream_options")
    assert after == before
    if "stream_options" in orjson.loads(raw) and not isinstance(sent, dict):
        # ROUTER BUGS (reported; pinned by test_bad_input::test_router_bug_*): an explicit null is left
        # in place after the injected one (last key wins upstream: no usage, nothing learned), and a
        # non-object is replaced, turning vLLM's 400 into a 200. Delete this branch once fixed.
        return
    assert asked == {**(sent or {}), "include_usage": True}


# -- SSE --------------------------------------------------------------------------------------------------
def data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj)


usage_objs = st.fixed_dictionaries(
    {"prompt_tokens": st.integers(0, 10**9)}, optional={"completion_tokens": st.integers(0, 10**6)}
)
line_text = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=["Cs"]), max_size=30)
token_events = st.builds(lambda t: [data({"choices": [{"index": 0, "delta": {"content": t}}]})], line_text)
usage_only_events = st.builds(lambda u: [data({"id": "x", "choices": [], "usage": u})], usage_objs)
continuous_usage_events = st.builds(lambda t, u: [data({"choices": [{"delta": {"content": t}}], "usage": u})],
                                    line_text, usage_objs)  # fmt: skip
other_events = st.sampled_from(
    [[b": keep-alive"], [b":"], [b"event: ping", b"data: {}"], [b"id: 7", b"retry: 10"], [b"data: [DONE]"],
     [b'data: {"usage": {"prompt_tokens": 9'], [b'data: {"choices": [], "usage": 5}'], [b"data:"]]
) | st.builds(lambda t: [b": " + t.encode()], line_text)  # fmt: skip
events = st.lists(token_events | usage_only_events | continuous_usage_events | other_events, max_size=12)


def usage_of(event_lines: list[bytes]) -> tuple[dict[str, Any] | None, bool]:
    """(usage, usage-only) of one generated event, decided independently of the scanner."""
    for line in event_lines:
        if not line.startswith(b"data:"):
            continue
        try:
            obj = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            return obj["usage"], obj.get("choices") == []
    return None, False


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[list[list[bytes]], bytes, bool, list[int]]:
    evs = draw(events)
    eol = draw(st.sampled_from([b"\n", b"\r\n", b"\r"]))
    terminated = draw(st.booleans())  # whether the last event has its blank line
    text = b"".join(eol.join(e) + eol + eol for e in evs)
    if evs and not terminated:
        text = text[: -2 * len(eol)]
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    return evs, eol, terminated, cuts


def feed_all(scanner: SseUsageScanner, text: bytes, cuts: list[int]) -> bytes:
    out, prev = [], 0
    for cut in [*cuts, len(text)]:
        out.append(scanner.feed(text[prev:cut]) or b"")
        prev = cut
    out.append(scanner.finish())
    return b"".join(out)


@settings(max_examples=500, deadline=None)
@given(stream=sse_streams(), strip=st.booleans())
def test_sse_scanner_under_any_chunking(stream: tuple[list[list[bytes]], bytes, bool, list[int]], strip: bool) -> None:
    evs, eol, terminated, cuts = stream
    framed = [eol.join(e) + eol + eol for e in evs]
    if evs and not terminated:
        framed[-1] = eol.join(evs[-1])
    scanner = SseUsageScanner(strip_usage_only=strip)
    out = feed_all(scanner, b"".join(framed), cuts)
    seen = [usage_of(e) for e in evs]
    usages = [u for u, _ in seen if u is not None]
    assert scanner.usage == (usages[-1] if usages else None)
    if strip:
        assert out == b"".join(f for f, (_, usage_only) in zip(framed, seen, strict=True) if not usage_only)
    else:
        assert out == b""


_EOL_RUN = re.compile(rb"[\r\n]+")


def hits_reported_blank_line_bug(text: bytes) -> bool:
    """ROUTER BUG (reported, pinned by test_bad_input::test_router_bug_sse_extra_blank_line): with
    stripping on, part of a run of three or more line endings ("\n\n\n", "\r\n\r\n\r\n") is dropped.
    Delete this predicate once sse.py is fixed."""
    return any(len(run) >= 3 and run != b"\r\n\r\n" for run in _EOL_RUN.findall(text))


def check_pass_through(text: bytes, out: bytes) -> None:
    """Without a usage-only event the stripping scanner must emit its input unchanged."""
    assert _EOL_RUN.sub(b"\n", out) == _EOL_RUN.sub(b"\n", text)  # never a data byte lost or changed
    if not hits_reported_blank_line_bug(text):
        assert out == text


@settings(max_examples=300, deadline=None)
@given(text=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10), limit=st.integers(1, 64))
def test_sse_scanner_passes_arbitrary_bytes_through(text: bytes, cuts: list[int], limit: int) -> None:
    """Bytes with no usage-only event are emitted unchanged, even past the pending-line limit."""
    scanner = SseUsageScanner(max_pending=limit, strip_usage_only=True)
    out = feed_all(scanner, text, sorted(c % (len(text) + 1) for c in cuts))
    if b"usage" not in text:
        check_pass_through(text, out)


# -- atheris (optional) -----------------------------------------------------------------------------------
def atheris_target(data: bytes) -> None:
    for endpoint in (CHAT, COMPLETIONS):
        try:
            shape = shape_from_body(endpoint, orjson.loads(data), ROUTER.categorizer)
        except (orjson.JSONDecodeError, ShapeError):
            continue
        assert ROUTER.decide(shape)[1].pool in (SHORT, LONG)
    scanner = SseUsageScanner(max_pending=256, strip_usage_only=True)
    half = len(data) // 2
    out = (scanner.feed(data[:half]) or b"") + (scanner.feed(data[half:]) or b"") + scanner.finish()
    if b"usage" not in data:
        check_pass_through(data, out)


ATHERIS_MAIN = """
import sys, atheris
with atheris.instrument_imports(include=["extproc"]):
    import extproc.algorithm, extproc.server.sse
from tests.hardening.test_fuzz import atheris_target
atheris.Setup(sys.argv, atheris_target)
atheris.Fuzz()
"""


def test_atheris_body_and_sse_scanners(tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    limits = ["-runs=20000", "-max_total_time=10", "-max_len=2048", f"-artifact_prefix={tmp_path}/"]
    run = subprocess.run(
        [sys.executable, "-c", ATHERIS_MAIN, *limits],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done" in run.stderr, run.stderr[-3000:]
