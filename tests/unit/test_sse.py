import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.emulator.responses import Envelope, ResponseEvents, ResponseHead, responses_usage
from extproc.server.sse import SseUsageScanner


def event(obj, nl=b"\n"):
    return b"data: " + orjson.dumps(obj) + nl + nl


def stream(nl=b"\n", with_usage=True, extras=b""):
    parts = [event({"choices": [{"delta": {"role": "assistant"}}]}, nl)]
    parts += [event({"choices": [{"delta": {"content": f"tok{i} "}}]}, nl) for i in range(5)]
    parts.append(extras)
    if with_usage:
        parts.append(event({"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 5}}, nl))
    parts.append(b"data: [DONE]" + nl + nl)
    return b"".join(parts)


def run(scanner, body, cuts):
    out = b""
    prev = 0
    for c in [*sorted(set(cuts)), len(body)]:
        r = scanner.feed(body[prev:c])
        out += r or b""
        prev = c
    return out + scanner.finish()


chunkings = st.lists(st.integers(min_value=0, max_value=4000), max_size=40)


@given(cuts=chunkings, crlf=st.booleans())
def test_any_chunking_gives_the_same_usage(cuts, crlf):
    body = stream(b"\r\n" if crlf else b"\n")
    s = SseUsageScanner()
    run(s, body, [c % (len(body) + 1) for c in cuts])
    assert s.usage == {"prompt_tokens": 42, "completion_tokens": 5}


@given(cuts=chunkings)
def test_stripping_removes_only_the_usage_chunk_under_any_chunking(cuts):
    body = stream()
    expected = stream(with_usage=False)
    s = SseUsageScanner(strip_usage_only=True)
    out = run(s, body, [c % (len(body) + 1) for c in cuts])
    assert out == expected
    assert s.usage["prompt_tokens"] == 42


def test_last_usage_wins_and_comments_keepalives_garbage_are_skipped():
    body = (
        b": keep-alive\n\n"
        + event({"choices": [{"delta": {}}], "usage": {"prompt_tokens": 1}})
        + b"data: {not json usage\n\n"
        + b"event: ping\ndata:\n\n"
        + stream()
    )
    s = SseUsageScanner()
    run(s, body, [7, 30, 31, 200])
    assert s.usage["prompt_tokens"] == 42


def test_missing_usage_is_none_and_final_event_without_blank_line_counts():
    s = SseUsageScanner()
    run(s, stream(with_usage=False), [10])
    assert s.usage is None
    s2 = SseUsageScanner()
    run(s2, b'data: {"choices":[],"usage":{"prompt_tokens":9}}', [])
    assert s2.usage == {"prompt_tokens": 9}


def test_oversized_event_stops_scanning_but_passes_bytes_through():
    s = SseUsageScanner(max_pending=100, strip_usage_only=True)
    body = b"data: " + b"x" * 500 + b"\n\n" + stream()
    out = run(s, body, [50, 300])
    assert out == body and s.overflowed


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=20), st.booleans())
def test_never_raises_and_strip_off_never_changes_bytes(chunks, strip):
    s = SseUsageScanner(max_pending=256, strip_usage_only=strip)
    out = b""
    for c in chunks:
        r = s.feed(c)
        if strip:
            out += r
        else:
            assert r is None
    out += s.finish()
    if not strip:
        assert out == b""


def responses_stream(crlf: bool) -> bytes:
    """A /v1/responses stream as the emulator writes it (typed events, usage in response.completed)."""
    events = ResponseEvents(ResponseHead(Envelope("resp_1", 0, "served-m"), None, None))
    body = events.start() + b"".join(events.delta(f" w{i}") for i in range(5))
    body += events.finish(" w0 w1 w2 w3 w4", "stop", responses_usage(42, 5))
    return body.replace(b"\n", b"\r\n") if crlf else body


@given(cuts=chunkings, crlf=st.booleans())
def test_responses_stream_usage_comes_from_response_completed_at_any_chunking(cuts, crlf):
    body = responses_stream(crlf)
    s = SseUsageScanner()
    run(s, body, [c % (len(body) + 1) for c in cuts])
    assert (s.usage["input_tokens"], s.usage["output_tokens"], s.model) == (42, 5, "served-m")


def test_responses_events_before_completion_carry_no_usage():
    body = responses_stream(False)
    s = SseUsageScanner()
    s.feed(body[: body.index(b"event: response.completed")])
    assert s.usage is None  # response.created/in_progress have "usage": null


@given(st.lists(st.integers(0, 2000)), st.booleans())
def test_a_length_finish_is_seen_however_the_stream_is_cut(cuts, cut_at_length):
    reason = "length" if cut_at_length else "stop"
    body = stream(extras=event({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
    scanner = SseUsageScanner()
    run(scanner, body, [c % len(body) for c in cuts])
    assert scanner.length_stop is cut_at_length and scanner.usage is not None


def test_a_word_length_in_the_content_is_not_a_length_finish():
    scanner = SseUsageScanner()
    scanner.feed(stream(extras=event({"choices": [{"delta": {"content": '"length"'}}]})))
    scanner.finish()
    assert not scanner.length_stop


def test_a_responses_stream_completed_as_incomplete_is_a_length_stop():
    response = {"status": "incomplete", "model": "m", "incomplete_details": {"reason": "max_output_tokens"},
                "usage": {"input_tokens": 9, "output_tokens": 3}}  # fmt: skip
    done = {"type": "response.completed", "response": response}
    scanner = SseUsageScanner()
    scanner.feed(b"event: response.completed\n" + event(done))
    scanner.finish()
    assert scanner.length_stop and scanner.usage == {"input_tokens": 9, "output_tokens": 3}
