"""The exchange state machine, driven with real Envoy protobuf messages (no gRPC)."""

import orjson
import pytest

from extproc.config import load_config
from extproc.emulator.responses import Envelope, ResponseEvents, ResponseHead, responses_usage
from extproc.server import envoy_wire as em
from extproc.server.envoy_wire import NONE, STREAMED
from extproc.server.events import ExchangeObserver
from extproc.server.exchange import Exchange, RouterRuntime, inject_include_usage
from tests.envoy_play import request_body, request_headers, response_body, response_headers, set_headers


@pytest.fixture
def rt():
    return RouterRuntime.from_config(load_config(env={}, overrides={"calibration": {"state_file": ""}}))


def chat(content="hello " * 50, **kw):
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}], **kw})


def route(rt, body, path="/v1/chat/completions", extra=None):
    ex = Exchange(rt)
    h = ex.handle(request_headers(path, extra=extra))
    b = ex.handle(request_body(body))
    return ex, h, b


def test_request_headers_remove_client_routing_header_and_force_identity(rt):
    ex = Exchange(rt)
    r = ex.handle(request_headers(extra={"x-budget-pool": "short", "accept-encoding": "gzip"}))
    m = r.request_headers.response.header_mutation
    assert "x-budget-pool" in m.remove_headers
    assert set_headers(m)["accept-encoding"] == "identity"


def test_short_request_sets_header_and_clears_route_cache(rt):
    _, _, b = route(rt, chat(max_tokens=100))
    c = b.request_body.response
    assert c.clear_route_cache
    assert set_headers(c.header_mutation)["x-budget-pool"] == "short"
    assert not c.HasField("body_mutation")  # unchanged body is never sent back


def test_long_by_max_tokens_and_by_size(rt):
    _, _, b = route(rt, chat(max_tokens=9000))
    assert set_headers(b.request_body.response.header_mutation)["x-budget-pool"] == "long"
    ex, _, b = route(rt, chat("word " * 10000, max_tokens=10))
    assert set_headers(b.request_body.response.header_mutation)["x-budget-pool"] == "long"
    assert ex.record.reason == "capacity"


@pytest.mark.parametrize(
    ("body", "path", "detail"),
    [
        (b"{not json", "/v1/chat/completions", "invalid_json"),
        (b"[1,2]", "/v1/chat/completions", "not_object"),
        (chat(max_tokens=-1), "/v1/chat/completions", "invalid_max_tokens"),
        (chat(), "/v1/embeddings", "unknown_endpoint"),
        (b"\xff\xfe", "/v1/completions", "invalid_json"),
    ],
)
def test_unreadable_goes_long_with_reason(rt, body, path, detail):
    ex, _, b = route(rt, body, path)
    assert set_headers(b.request_body.response.header_mutation)["x-budget-pool"] == "long"
    assert (ex.record.reason, ex.record.detail) == ("unparseable", detail)


def test_gzip_body_goes_long(rt):
    ex, _, _ = route(rt, b"\x1f\x8b...", extra={"content-encoding": "gzip"})
    assert ex.record.detail == "encoded_body"


def test_bodyless_request_is_routed_at_headers(rt):
    ex = Exchange(rt)
    r = ex.handle(request_headers("/v1/models", method="GET", eos=True))
    c = r.request_headers.response
    assert c.clear_route_cache and set_headers(c.header_mutation)["x-budget-pool"] == "long"


def test_stream_injects_include_usage_with_matching_content_length(rt):
    raw = chat(stream=True, max_tokens=10)
    _, _, b = route(rt, raw)
    c = b.request_body.response
    new = c.body_mutation.body
    assert orjson.loads(new)["stream_options"] == {"include_usage": True}
    assert set_headers(c.header_mutation)["content-length"] == str(len(new))
    assert new.endswith(raw[1:])  # client bytes kept verbatim after the inserted key


def test_inject_keeps_other_stream_options_and_handles_empty_object():
    assert orjson.loads(inject_include_usage(b'{"stream_options":{"x":1}}', {"stream_options": {"x": 1}})) == {
        "stream_options": {"x": 1, "include_usage": True}
    }
    assert orjson.loads(inject_include_usage(b" { } ", {})) == {"stream_options": {"include_usage": True}}


def test_client_that_asked_for_usage_is_left_alone(rt):
    _, _, b = route(rt, chat(stream=True, stream_options={"include_usage": True}))
    assert not b.request_body.response.HasField("body_mutation")


def test_json_response_learns(rt):
    ex, _, _ = route(rt, chat(max_tokens=10))
    r = ex.handle(response_headers())
    assert not r.HasField("mode_override")
    ex.handle(response_body(b'{"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":10}}'))
    assert ex.record.usage_source == "json" and ex.record.observation == "accepted"
    assert rt.router.calibrator.state("prose").samples == 1


def test_sse_switches_to_streamed_learns_and_strips_injected_chunk(rt):
    ex, _, _ = route(rt, chat(stream=True, max_tokens=10))
    r = ex.handle(response_headers(content_type="text/event-stream", extra={"content-length": "10"}))
    assert r.mode_override.response_body_mode == STREAMED
    assert "content-length" in r.response_headers.response.header_mutation.remove_headers
    content = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":1}}\n\n'
    out1 = ex.handle(response_body(content + usage[:20], eos=False)).response_body.response
    assert out1.body_mutation.body == content
    out2 = ex.handle(response_body(usage[20:] + b"data: [DONE]\n\n", eos=True)).response_body.response
    assert out2.body_mutation.body == b"data: [DONE]\n\n"
    assert ex.record.usage_source == "sse" and ex.record.prompt_tokens == 80


def test_sse_without_injection_is_never_rewritten(rt):
    ex, _, _ = route(rt, chat(stream=True, stream_options={"include_usage": True}))
    ex.handle(response_headers(content_type="text/event-stream"))
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":80,"completion_tokens":1}}\n\n'
    r = ex.handle(response_body(usage, eos=True)).response_body.response
    assert not r.HasField("body_mutation")
    assert ex.record.prompt_tokens == 80


def test_overflow_400_teaches_exact_prompt_tokens(rt):
    ex, _, _ = route(rt, chat(max_tokens=10))
    ex.handle(response_headers(status=400))
    msg = (
        "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens "
        "(75 in the messages, 8925 in the completion)."
    )
    ex.handle(response_body(orjson.dumps({"error": {"message": msg, "code": 400}})))
    assert (ex.record.usage_source, ex.record.prompt_tokens) == ("overflow_400", 75)


def test_unparseable_requests_end_at_the_decision():
    rt = runtime_sampling(1.0)
    ex, _, _ = route(rt, b"{bad")
    assert ex.done and ex.record.status == 0  # nothing to learn: the service closes after the body
    following = runtime_sampling(1.0, server={"follow_every_status": True})
    ex, _, _ = route(following, b"{bad")
    assert not ex.done  # the status still comes (one small message) ...
    r = ex.handle(response_headers(status=400))
    assert r.mode_override.response_body_mode == NONE  # ... but nothing to learn from the body
    assert ex.done and ex.record.status == 400  # the service closes the stream cleanly


def runtime_sampling(rate: float, **sections: dict) -> RouterRuntime:
    overrides = {"calibration": {"state_file": "", "converged_sample_rate": rate}, **sections}
    rt = RouterRuntime.from_config(load_config(env={}, overrides=overrides))
    rt.router.calibrator.load({"prose": {"mean": 4.5, "dev": 0.1, "samples": 500}})
    return rt


def overflow_body(prompt_tokens):
    msg = (
        "This model's maximum context length is 8192 tokens. However, your request has "
        f"{prompt_tokens} input tokens. Please reduce the length of the input messages."
    )
    return orjson.dumps({"error": {"message": msg, "type": "BadRequestError", "param": None, "code": 400}})


# ~4.5 KB of prose: ~1,000 tokens, routed short, but over the short context at the bytes/token floor
# (min_ratio 0.5): it might fail for its size, so its status is followed even when unsampled.
MIGHT_OVERFLOW = "hello " * 750


def test_an_unsampled_request_that_fits_at_any_ratio_ends_at_the_decision():
    rt = runtime_sampling(0.0)
    ex, _, _ = route(rt, chat(max_tokens=10))  # 300 bytes: under 8192 tokens at 2 tokens a byte
    assert ex.record.pool == "short" and not ex.record.observed and ex.done  # two messages, no response
    ex.close()
    assert rt.router.pressure.count("short") == 1  # its lease still counts it
    ex, _, _ = route(rt, chat(max_tokens=7900))  # the same text with an output limit that might not fit
    assert ex.record.pool == "short" and not ex.done
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10))
    assert ex.record.pool == "short" and not ex.done


def test_a_short_pool_400_is_read_and_learned_even_when_converged():
    rt = runtime_sampling(0.0)
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10))
    assert ex.record.pool == "short" and not ex.record.observed  # not sampled
    r = ex.handle(response_headers(status=400))
    assert not r.HasField("mode_override") and not ex.done  # stays BUFFERED: the body has the count
    ex.handle(response_body(overflow_body(1000)))
    assert (ex.record.usage_source, ex.record.prompt_tokens) == ("overflow_400", 1000)
    assert rt.router.calibrator.state("prose").samples == 501


def test_an_unsampled_success_is_not_read():
    rt = runtime_sampling(0.0)
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10))
    r = ex.handle(response_headers(status=200))
    assert r.mode_override.response_body_mode == NONE and ex.done and ex.record.status == 200


def test_a_retried_answer_from_the_long_pool_is_counted_and_learned():
    rt = runtime_sampling(0.0)
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10))
    r = ex.handle(response_headers(status=200, extra={"x-budget-attempts": "2"}))
    assert not r.HasField("mode_override")  # BUFFERED: the long pool's usage is the exact count
    assert (ex.record.attempts, ex.record.pool, ex.record.served_pool) == (2, "short", "long")
    ex.handle(response_body(b'{"usage":{"prompt_tokens":1070,"completion_tokens":3}}'))
    assert (ex.record.usage_source, ex.record.prompt_tokens) == ("json", 1070)


def test_a_followed_request_the_net_moved_counts_against_the_long_pool(rt):
    ex, _, _ = route(rt, chat(max_tokens=10))  # cold: followed, so tracked in flight
    assert rt.router.pressure.in_flight == {"short": 1, "long": 0}
    ex.handle(response_headers(status=200, extra={"x-budget-attempts": "2"}))
    assert rt.router.pressure.in_flight == {"short": 0, "long": 1}
    ex.close()
    assert rt.router.pressure.in_flight == {"short": 0, "long": 0}


def test_a_streamed_retry_is_read_only_with_its_usage_chunk():
    rt = runtime_sampling(0.0)
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10, stream=True))
    r = ex.handle(response_headers(content_type="text/event-stream", extra={"x-budget-attempts": "2"}))
    assert r.mode_override.response_body_mode == NONE and ex.record.served_pool == "long"
    body = chat(MIGHT_OVERFLOW, max_tokens=10, stream=True, stream_options={"include_usage": True})
    ex, _, _ = route(rt, body)
    r = ex.handle(response_headers(content_type="text/event-stream", extra={"x-budget-attempts": "2"}))
    assert r.mode_override.response_body_mode == STREAMED
    ex.handle(response_body(b'data: {"choices":[],"usage":{"prompt_tokens":1071,"completion_tokens":1}}\n\n'))
    assert ex.record.prompt_tokens == 1071


def test_a_lower_bound_is_a_floor_for_that_prompt_and_leaves_the_category_alone():
    rt = runtime_sampling(0.0)
    before = rt.router.calibrator.ratio("prose")
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10))  # 4.5 KB of prose
    ex.handle(response_headers(status=400))
    bound = overflow_body(0).replace(b"has 0 input", b"has at least 1150 input")
    ex.handle(response_body(bound))
    assert ex.record.usage_source == "overflow_400_bound" and ex.record.observation == "accepted"
    assert rt.router.calibrator.ratio("prose") == before  # not a category-wide sample
    assert rt.router.calibrator.state("prose").samples == 500
    assert rt.router.decide(ex.ticket.shape)[0].prompt_tokens >= 1150  # this prompt now counts at least the bound
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10))
    ex.handle(response_headers(status=400))
    ex.handle(response_body(bound.replace(b"least 1150", b"least 2")))  # a looser floor lowers nothing
    assert rt.router.decide(ex.ticket.shape)[0].prompt_tokens >= 1150


def test_the_long_pools_count_after_a_net_retry_is_trusted():
    rt = runtime_sampling(0.0)
    ex, _, _ = route(rt, chat(MIGHT_OVERFLOW, max_tokens=10))  # might fail for its size: its status is read
    assert not ex.done
    ex.handle(response_headers(status=200, extra={"x-budget-attempts": "2"}))
    ex.handle(response_body(b'{"usage":{"prompt_tokens":6000,"completion_tokens":3}}'))  # 6x the estimate
    assert ex.record.observation == "accepted"
    assert rt.router.decide(ex.ticket.shape)[0].prompt_tokens >= 6000  # remembered for this prompt
    other = rt.router.shape("chat", {"model": "m", "messages": [{"role": "user", "content": "hullo " * 750}]})
    assert rt.router.decide(other)[0].prompt_tokens < 6000  # and for no other


def test_converged_categories_are_sampled_and_unsampled_ones_leased():
    rt = runtime_sampling(0.0)
    ex, _, b = route(rt, chat(MIGHT_OVERFLOW, stream=True, max_tokens=10))
    assert not ex.done and not ex.record.observed  # the status still comes (one small message)
    assert not b.request_body.response.HasField("body_mutation")  # no include_usage when not observing
    assert rt.router.pressure.in_flight["short"] == 0 and rt.router.pressure.count("short") == 1  # a lease
    rt = runtime_sampling(1.0)
    ex2, _, _ = route(rt, chat(max_tokens=10))
    assert not ex2.done and ex2.record.observed


def test_pressure_tracks_in_flight_and_spills(rt):
    rt.router.pressure.capacity["short"] = 2
    exchanges = [route(rt, chat(max_tokens=10))[0] for _ in range(3)]
    assert [e.record.pool for e in exchanges] == ["short", "short", "long"]
    assert exchanges[2].record.reason == "spillover"
    for e in exchanges:
        e.close()
    assert rt.router.pressure.in_flight == {"short": 0, "long": 0}


def test_response_model_is_recorded_and_body_only_kept_when_capturing(rt):
    ex, _, _ = route(rt, chat(max_tokens=10))
    assert ex.record.request_body is None
    ex.handle(response_headers())
    ex.handle(response_body(b'{"model":"llama-3","usage":{"prompt_tokens":80,"completion_tokens":10}}'))
    assert ex.record.response_model == "llama-3"
    capturing = RouterRuntime.from_config(
        load_config(env={}, overrides={"calibration": {"state_file": ""}, "telemetry": {"capture_content": True}})
    )
    ex2, _, _ = route(capturing, chat("secret", max_tokens=10))
    assert b"secret" in ex2.record.request_body


# ---- the Responses API -----------------------------------------------------------------------------
def responses(text="hello " * 50, **kw):
    return orjson.dumps({"model": "m", "instructions": "Be brief.", "input": text, **kw})


@pytest.mark.parametrize(("limit", "pool", "reason"), [(100, "short", "threshold"), (9000, "long", "capacity")])
def test_responses_are_routed_by_their_budget(rt, limit, pool, reason):
    ex, _, b = route(rt, responses(max_output_tokens=limit), path="/v1/responses")
    assert set_headers(b.request_body.response.header_mutation)["x-budget-pool"] == pool
    assert (ex.record.endpoint, ex.record.reason, ex.record.output_reserve) == ("responses", reason, limit)
    assert ex.record.estimated_total_tokens > limit  # instructions + input + template framing + output


def test_responses_stream_is_never_rewritten_and_learns_from_response_completed(rt):
    ex, _, b = route(rt, responses(stream=True, max_output_tokens=10), path="/v1/responses")
    assert not b.request_body.response.HasField("body_mutation")  # usage always comes: nothing to inject
    r = ex.handle(response_headers(content_type="text/event-stream"))
    assert r.mode_override.response_body_mode == STREAMED
    events = ResponseEvents(ResponseHead(Envelope("resp_1", 0, "served-m"), "Be brief.", 10))
    body = events.start() + events.delta("hi") + events.finish("hi", "length", responses_usage(83, 1))
    out = ex.handle(response_body(body[:100], eos=False)).response_body.response
    assert not out.HasField("body_mutation")
    ex.handle(response_body(body[100:], eos=True))
    assert (ex.record.usage_source, ex.record.prompt_tokens, ex.record.completion_tokens) == ("sse", 83, 1)
    assert ex.record.response_model == "served-m" and ex.record.observation == "accepted"


def test_responses_json_learns_input_tokens(rt):
    ex, _, _ = route(rt, responses(max_output_tokens=10), path="/v1/responses")
    ex.handle(response_headers())
    ex.handle(response_body(b'{"object":"response","usage":{"input_tokens":83,"output_tokens":10}}'))
    assert (ex.record.usage_source, ex.record.prompt_tokens, ex.record.completion_tokens) == ("json", 83, 10)


@pytest.mark.parametrize(
    ("body", "detail"),
    [(b'{"input": 5}', "bad_input"), (b'{"input": "x", "max_output_tokens": 0}', "invalid_max_tokens")],
)
def test_unreadable_responses_go_long(rt, body, detail):
    ex, _, _ = route(rt, body, path="/v1/responses")
    assert (ex.record.pool, ex.record.reason, ex.record.detail) == ("long", "unparseable", detail)


# ---- requests without an output limit ---------------------------------------------------------------
def test_no_output_limit_reserve_routes_by_default_reserve_and_long_sends_long(rt):
    ex, _, _ = route(rt, chat())
    assert (ex.record.pool, ex.record.reason, ex.record.output_defaulted) == ("short", "threshold", True)
    assert ex.record.output_reserve == rt.cfg.routing.default_output_tokens
    cfg = load_config(env={}, overrides={"calibration": {"state_file": ""}, "routing": {"no_output_limit": "long"}})
    rt_long = RouterRuntime.from_config(cfg)
    ex, _, _ = route(rt_long, chat())
    assert (ex.record.pool, ex.record.reason) == ("long", "no_output_limit")
    ex, _, _ = route(rt_long, responses(), path="/v1/responses")
    assert (ex.record.pool, ex.record.reason) == ("long", "no_output_limit")
    ex, _, _ = route(rt_long, chat(max_tokens=10))  # a request with a limit is routed by its budget
    assert (ex.record.pool, ex.record.reason) == ("short", "threshold")


def test_linear_estimator_routes_near_the_boundary_and_learns_from_usage():
    rt = RouterRuntime.from_config(
        load_config(env={}, overrides={"calibration": {"state_file": ""}, "estimator": {"kind": "linear"}})
    )
    text = "Operators size every pool for the longest context, yet most prompts are short. " * 340  # 27 KB
    ex, _, b = route(rt, chat(text, max_tokens=900))
    assert set_headers(b.request_body.response.header_mutation)["x-budget-pool"] in ("short", "long")
    est = ex.ticket.estimate if ex.ticket is not None else None
    assert est is not None and est.features is not None  # near B_short: the v2 model ran
    ex.handle(response_headers())
    ex.handle(response_body(b'{"choices":[],"usage":{"prompt_tokens":5800,"completion_tokens":10}}'))
    bucket = rt.router.linear.bucket("m", ex.record.category)
    assert bucket.samples == 1


def test_constant_answers_are_built_once_and_shared_between_exchanges(rt):
    """The routing decision's answer is one of a few: built once, identical to a freshly built one."""
    first, _, b1 = route(rt, chat(max_tokens=10))
    second, _, b2 = route(rt, chat("other words " * 20, max_tokens=10))
    assert b1 is b2 and first.record.pool == second.record.pool == "short"
    built = em.request_body_response(em.common(first._routing_headers(), clear_route_cache=True))
    assert b1.SerializeToString(deterministic=True) == built.SerializeToString(deterministic=True)
    _, _, long_answer = route(rt, chat(max_tokens=9000))
    assert (
        long_answer is not b1
        and set_headers(long_answer.request_body.response.header_mutation)["x-budget-pool"] == "long"
    )
    ex, _, _ = route(rt, chat(stream=True, max_tokens=10))  # include_usage injected: a body of its own
    assert ex.record.include_usage_injected


def test_a_per_request_header_is_never_shared():
    class Tracing(ExchangeObserver):
        def upstream_headers(self, record):
            return {"traceparent": f"00-{record.key:032x}-{1:016x}-01"}

    rt = RouterRuntime.from_config(load_config(env={}, overrides={"calibration": {"state_file": ""}}), Tracing())
    _, h1, _ = route(rt, chat(max_tokens=10))
    _, h2, _ = route(rt, chat(max_tokens=10))
    first, second = (set_headers(h.request_headers.response.header_mutation)["traceparent"] for h in (h1, h2))
    assert first != second


# ---- truncation by the short context (vLLM 0.32 clamps instead of refusing) --------------------------
def clamped_runtime() -> RouterRuntime:
    """A converged router that reads no sampled answer (rate 0) and a 2048-token short pool."""
    overrides = {
        "calibration": {"state_file": "", "converged_sample_rate": 0.0},
        "routing": {"b_short": 2048, "short_context": 2048},
        "estimator": {"kind": "ratio"},
    }
    rt = RouterRuntime.from_config(load_config(env={}, overrides=overrides))
    rt.router.calibrator.load({"prose": {"mean": 4.0, "dev": 0.05, "samples": 500}})
    return rt


CLAMPED_CHOICE = {"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "length"}


def test_a_near_boundary_short_answer_is_read_although_unsampled_and_its_cut_counted():
    rt = clamped_runtime()
    ex, _, _ = route(rt, chat("word " * 1200, max_tokens=400))  # ~1500 estimated: short, near the context
    assert ex.record.pool == "short" and ex.record.must_read and ex.record.observed
    r = ex.handle(response_headers(status=200))
    assert not r.HasField("mode_override") and not ex.done  # BUFFERED: its usage is wanted
    answer = {"choices": [CLAMPED_CHOICE], "usage": {"prompt_tokens": 1900, "completion_tokens": 148}}
    ex.handle(response_body(orjson.dumps(answer)))
    assert ex.record.context_truncated and ex.record.prompt_tokens == 1900  # the exact size, learned
    assert ex.record.observation == "accepted" and rt.router.calibrator.state("prose").samples == 501


def test_a_streamed_cut_is_seen_in_the_finish_chunk_with_the_injected_usage():
    rt = clamped_runtime()
    ex, _, b = route(rt, chat("word " * 1200, max_tokens=400, stream=True))
    assert b.request_body.response.HasField("body_mutation")  # include_usage injected: it must be read
    ex.handle(response_headers(content_type="text/event-stream"))
    finish = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    usage = {"choices": [], "usage": {"prompt_tokens": 1700, "completion_tokens": 60}}  # short of 2048
    stream = b"data: " + orjson.dumps(finish) + b"\n\ndata: " + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"
    ex.handle(response_body(stream))
    # 1700 + 60 is below the 2048 the router believes, but "length" before max_tokens is the context's.
    assert ex.record.context_truncated and ex.record.usage_source == "sse"


def test_an_answer_that_got_all_it_asked_for_is_not_a_truncation():
    rt = clamped_runtime()
    ex, _, _ = route(rt, chat("word " * 1200, max_tokens=400))
    ex.handle(response_headers(status=200))
    answer = {"choices": [CLAMPED_CHOICE], "usage": {"prompt_tokens": 1500, "completion_tokens": 400}}
    ex.handle(response_body(orjson.dumps(answer)))
    assert not ex.record.context_truncated and ex.record.usage_source == "json"
