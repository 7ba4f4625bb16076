"""Telemetry driven by real exchanges: real Envoy protobuf messages through ``Exchange`` (and once
through the real gRPC server), observed with the SDK's in-memory span exporter and metric reader."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode

from extproc.config import load_config
from extproc.emulator import EmulatorConfig, start_emulator
from extproc.server.events import ExchangeRecord
from extproc.server.exchange import Exchange, RouterRuntime
from extproc.server.pool_load import build_scraper
from extproc.server.service import RouterServer
from extproc.telemetry import (
    DecisionLog,
    DecisionMetrics,
    ExchangeSpans,
    HistogramSet,
    JsonLinesFormatter,
    TelemetryObserver,
    merging,
)
from extproc.telemetry import names as n
from tests.envoy_play import request_body, request_headers, response_body, response_headers, set_headers
from tests.waiting import until_async

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
ENVOY_TRACE = "0af7651916cd43dd8448eb211c80319c"
ENVOY_SPAN = "b7ad6b7169203331"
HEADER_TP = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
METADATA_TP = f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01"
SECRET = "zebra-quokka-secret "


@dataclass
class Rig:
    rt: RouterRuntime
    observer: TelemetryObserver
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader

    def finished_spans(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self) -> dict[str, list]:
        out: dict[str, list] = {}
        data = self.reader.get_metrics_data()
        for rm in data.resource_metrics if data else ():
            for sm in rm.scope_metrics:
                for m in sm.metrics:
                    out[m.name] = list(m.data.data_points)
        return out


def make_rig(
    capture_content: bool = False,
    decisions: DecisionLog | None = None,
    parent_based: bool = False,
    live_load: dict[str, object] | None = None,
) -> Rig:
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    histograms = HistogramSet(Resource.create({}), InstrumentationScope("test"))
    reader = merging(InMemoryMetricReader)(histograms)
    meters = MeterProvider(metric_readers=[reader])
    metrics = DecisionMetrics(meters.get_meter("test"), histograms)
    spans = ExchangeSpans(tracers.get_tracer("test"), capture_content, parent_based=parent_based)
    observer = TelemetryObserver(spans, metrics, decisions)
    overrides = {
        "server": {"listen": "127.0.0.1:0"},
        "calibration": {"state_file": ""},
        "telemetry": {"capture_content": capture_content},
        "live_load": live_load or {},
    }
    rt = RouterRuntime.from_config(load_config(env={}, overrides=overrides), observer)
    observer.attach(rt)
    return Rig(rt, observer, exporter, reader)


@pytest.fixture
def rig() -> Rig:
    return make_rig()


def chat(content: str = "hello " * 50, **kw) -> bytes:
    return orjson.dumps({"model": "m", "messages": [{"role": "user", "content": content}], **kw})


def usage_json(prompt: int, completion: int = 7, model: str = "m-resp") -> bytes:
    return orjson.dumps(
        {"model": model, "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    )


def sse_usage(prompt: int, completion: int = 2) -> bytes:
    usage = {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    return b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\ndata: ' + orjson.dumps(usage) + b"\n\ndata: [DONE]\n\n"


OVERFLOW = orjson.dumps(
    {
        "object": "error",
        "message": "This model's maximum context length is 8192 tokens. However, you requested 20010 tokens "
        "(20000 in the messages, 10 in the completion). Please reduce the length of the messages or completion.",
        "type": "BadRequestError",
        "code": 400,
    }
)


def run(rt: RouterRuntime, body: bytes, response=None, *, headers=None, metadata=(), path="/v1/chat/completions"):
    """One exchange; ``response`` = (status, content_type, body) or None for a stream that ends early."""
    ex = Exchange(rt, metadata)
    first = ex.handle(request_headers(path, extra=headers))
    ex.handle(request_body(body))
    if response is not None:
        status, ctype, rbody = response
        ex.handle(response_headers(status, ctype))
        ex.handle(response_body(rbody))
    ex.close()
    return ex, first


# -- spans -----------------------------------------------------------------------------------------
def test_one_server_span_with_genai_and_router_attributes(rig):
    ex, _ = run(rig.rt, chat(max_tokens=100), (200, "application/json", usage_json(60, 7)))
    [span] = rig.finished_spans()
    rec = ex.record
    assert span.kind is SpanKind.SERVER
    assert span.name == "chat m"
    a = span.attributes
    assert a[n.GEN_AI_OPERATION] == "chat"
    assert a[n.GEN_AI_REQUEST_MODEL] == "m"
    assert a[n.GEN_AI_REQUEST_MAX_TOKENS] == 100
    assert (a[n.GEN_AI_INPUT_TOKENS], a[n.GEN_AI_OUTPUT_TOKENS]) == (60, 7)
    assert (a[n.POOL], a[n.REASON], a[n.CATEGORY]) == ("short", "threshold", "prose")
    assert a[n.TEXT_BYTES] == rec.text_bytes > 0
    assert a[n.EST_TOTAL_TOKENS] == rec.estimated_prompt_tokens + 100 and rec.estimated_prompt_tokens > 0
    assert a[n.RATIO] == pytest.approx(4.0)
    assert a[n.OUTPUT_RESERVE] == 100
    assert n.STREAM not in a and n.SPILLED not in a  # flags are only set when true
    assert a[n.USAGE_SOURCE] == "json" and n.OBSERVATION not in a  # accepted: nothing to flag
    expected_error = (rec.estimated_prompt_tokens - 60) / 60 * 100
    assert a[n.ESTIMATE_ERROR_PCT] == pytest.approx(expected_error)
    assert a[n.HTTP_STATUS] == 200
    assert span.status.status_code is StatusCode.UNSET


def test_span_lives_from_request_headers_until_the_stream_ends(rig):
    ex = Exchange(rig.rt)
    ex.handle(request_headers())
    ex.handle(request_body(chat(stream=True)))
    ex.handle(response_headers(200, "text/event-stream"))
    ex.handle(response_body(sse_usage(60), eos=True))
    assert rig.finished_spans() == []  # usage arrived, but the exchange is still open
    ex.close()
    [span] = rig.finished_spans()
    assert span.attributes[n.STREAM] is True and span.attributes[n.USAGE_SOURCE] == "sse"
    assert n.GEN_AI_REQUEST_MAX_TOKENS not in span.attributes  # client sent none: we used a default
    assert span.attributes[n.OUTPUT_RESERVE] == ex.record.output_reserve > 0


def test_stream_that_ends_early_still_ends_the_span_with_the_decision(rig):
    run(rig.rt, chat("word " * 10000, max_tokens=10))  # client went away before any response
    [span] = rig.finished_spans()
    assert (span.attributes[n.POOL], span.attributes[n.REASON]) == ("long", "capacity")
    assert n.USAGE_SOURCE not in span.attributes and n.HTTP_STATUS not in span.attributes
    assert rig.observer.live_exchanges == 0


def test_unparseable_span_carries_reason_and_detail_only(rig):
    run(rig.rt, b"{not json", (200, "application/json", b"{}"))
    [span] = rig.finished_spans()
    assert (span.attributes[n.REASON], span.attributes[n.DETAIL]) == ("unparseable", "invalid_json")
    assert n.GEN_AI_OPERATION not in span.attributes and span.name == n.SPAN_NAME
    assert span.attributes[n.URL_PATH] == "/v1/chat/completions"
    assert span.attributes[n.HTTP_STATUS] == 200  # the response status, when the router saw it


def test_server_error_marks_the_span(rig):
    run(rig.rt, chat(max_tokens=5), (503, "application/json", b"{}"))
    [span] = rig.finished_spans()
    assert span.status.status_code is StatusCode.ERROR


@pytest.mark.parametrize(
    ("headers", "metadata", "parent"),
    [
        ({"traceparent": HEADER_TP}, (), (CALLER_TRACE, CALLER_SPAN)),
        (None, (("traceparent", METADATA_TP),), (ENVOY_TRACE, ENVOY_SPAN)),
        ({"traceparent": HEADER_TP}, (("traceparent", METADATA_TP),), (ENVOY_TRACE, ENVOY_SPAN)),
        (
            {"traceparent": f"00-{ENVOY_TRACE}-{CALLER_SPAN}-01"},
            (("traceparent", METADATA_TP),),
            (ENVOY_TRACE, ENVOY_SPAN),
        ),
        ({"traceparent": "00-garbage"}, (("traceparent", METADATA_TP),), (ENVOY_TRACE, ENVOY_SPAN)),
        ({"traceparent": HEADER_TP}, (("traceparent", "00-garbage"),), (CALLER_TRACE, CALLER_SPAN)),
    ],
    ids=["header", "grpc-metadata", "envoy-wins", "same-trace-envoy-span", "bad-header", "bad-metadata"],
)
def test_parent_from_header_or_grpc_metadata(rig, headers, metadata, parent):
    run(rig.rt, chat(max_tokens=5), headers=headers, metadata=metadata)
    [span] = rig.finished_spans()
    assert span.parent is not None and span.parent.is_remote
    assert (format(span.parent.trace_id, "032x"), format(span.parent.span_id, "016x")) == parent
    assert format(span.context.trace_id, "032x") == parent[0]


def test_root_span_without_any_context(rig):
    run(rig.rt, chat(max_tokens=5), metadata=(("x-envoy-internal", "true"), ("grpc-trace-bin", b"\x00")))
    [span] = rig.finished_spans()
    assert span.parent is None


def test_traceparent_injected_into_the_upstream_request(rig):
    _, first = run(rig.rt, chat(max_tokens=5), headers={"traceparent": HEADER_TP, "tracestate": "vendor=1"})
    [span] = rig.finished_spans()
    sent = set_headers(first.request_headers.response.header_mutation)
    ctx = span.context
    assert sent["traceparent"] == f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    assert sent["tracestate"] == "vendor=1"
    assert sent["accept-encoding"] == "identity"  # the exchange's own headers are still there


def test_prompt_text_is_never_recorded_by_default(rig):
    run(rig.rt, chat(SECRET * 20, max_tokens=5), (200, "application/json", usage_json(80)))
    [span] = rig.finished_spans()
    assert all("zebra" not in str(v) for v in span.attributes.values())
    assert n.GEN_AI_INPUT_MESSAGES not in span.attributes


def test_prompt_recorded_only_with_capture_content():
    rig = make_rig(capture_content=True)
    run(rig.rt, chat(SECRET, max_tokens=5))
    [span] = rig.finished_spans()
    assert orjson.loads(span.attributes[n.GEN_AI_INPUT_MESSAGES]) == [
        {"role": "user", "parts": [{"type": "text", "content": SECRET}]}
    ]


def test_a_failing_telemetry_part_never_breaks_routing(caplog):
    broken = TelemetryObserver(ExchangeSpans(tracer=None))  # type: ignore[arg-type]
    rt = RouterRuntime.from_config(load_config(env={}, overrides={"calibration": {"state_file": ""}}), broken)
    with caplog.at_level(logging.WARNING, "budget_router.telemetry"):
        for _ in range(3):
            ex, _ = run(rt, chat(max_tokens=5), (200, "application/json", usage_json(60)))
            assert ex.record.pool == "short" and ex.record.observation == "accepted"
    assert [r.message for r in caplog.records].count(
        "telemetry hook started failed; routing is unaffected (logged once)"
    ) == 1


# -- metrics ---------------------------------------------------------------------------------------
def scripted(rig: Rig) -> list[ExchangeRecord]:
    """Six exchanges covering every counter: short/json, stream/sse without max_tokens, unparseable,
    capacity with an overflow 400, a lying backend (out of bounds), and a spillover."""
    rt, recs = rig.rt, []
    recs.append(run(rt, chat(max_tokens=100), (200, "application/json", usage_json(60)))[0].record)
    recs.append(run(rt, chat(stream=True), (200, "text/event-stream", sse_usage(61)))[0].record)
    recs.append(run(rt, b"{not json")[0].record)
    recs.append(run(rt, chat("word " * 10000, max_tokens=10), (400, "application/json", OVERFLOW))[0].record)
    recs.append(run(rt, chat(max_tokens=50), (200, "application/json", usage_json(20)))[0].record)
    for _ in range(rt.cfg.spillover.short_capacity):
        rt.router.pressure.acquire("short")
    recs.append(run(rt, chat(max_tokens=50))[0].record)
    for _ in range(rt.cfg.spillover.short_capacity):
        rt.router.pressure.release("short")
    return recs


def by_attrs(points, key=lambda p: p.value):
    return {tuple(sorted(p.attributes.items())): key(p) for p in points}


def test_metric_values_after_scripted_exchanges(rig):
    recs = scripted(rig)
    assert [r.usage_source for r in recs] == ["json", "sse", "", "overflow_400", "json", ""]
    assert recs[4].observation == "out_of_bounds" and recs[5].spilled
    m = rig.points()
    counters = (n.M_REQUESTS, n.M_UNPARSEABLE, n.M_NO_MAX_TOKENS, n.M_USAGE, n.M_REJECTED)
    m = {k: [p for p in v if p.value] if k in counters else v for k, v in m.items()}  # the 0 series: own test
    assert by_attrs(m[n.M_REQUESTS]) == {
        (("endpoint", "chat"), ("pool", "short"), ("reason", "threshold")): 3,
        (("endpoint", "other"), ("pool", "long"), ("reason", "unparseable")): 1,
        (("endpoint", "chat"), ("pool", "long"), ("reason", "capacity")): 1,
        (("endpoint", "chat"), ("pool", "long"), ("reason", "spillover")): 1,
    }
    assert by_attrs(m[n.M_SPILLOVERS]) == {(): 1}
    assert by_attrs(m[n.M_UNPARSEABLE]) == {(("detail", "invalid_json"),): 1}
    assert by_attrs(m[n.M_NO_MAX_TOKENS]) == {(("endpoint", "chat"),): 1}
    assert by_attrs(m[n.M_USAGE]) == {
        (("source", "json"),): 2,
        (("source", "sse"),): 1,
        (("source", "overflow_400"),): 1,
    }
    assert by_attrs(m[n.M_REJECTED]) == {(("cause", "out_of_bounds"),): 1}

    [err] = m[n.M_ESTIMATE_ERROR]  # out-of-bounds usage is not an estimate error: excluded
    assert dict(err.attributes) == {"category": "prose"} and err.count == 3
    assert err.sum == pytest.approx(sum(100 + recs[i].estimate_error_pct for i in (0, 1, 3)))
    assert err.min < 100 < err.max  # signed: the overflow one was under-estimated, the others over
    assert err.min == pytest.approx(100 + recs[3].estimate_error_pct) and recs[3].estimate_error_pct < 0
    assert tuple(err.explicit_bounds) == n.ERROR_PCT_BUCKETS

    tokens = by_attrs(m[n.M_EST_TOKENS], key=lambda p: (p.count, p.sum))
    assert tokens[(("category", "prose"), ("pool", "short"))] == (
        3,
        sum(recs[i].estimated_total_tokens for i in (0, 1, 4)),
    )
    assert tokens[(("category", "prose"), ("pool", "long"))] == (2, sum(recs[i].estimated_total_tokens for i in (3, 5)))

    phases = by_attrs(m[n.M_PROCESSING], key=lambda p: p.count)
    assert phases[(("phase", "request_headers"),)] == 6 and phases[(("phase", "request_body"),)] == 6
    assert phases[(("phase", "response"),)] == 4
    bounds = m[n.M_PROCESSING][0].explicit_bounds
    assert tuple(bounds) == n.PROCESSING_BUCKETS and sum(m[n.M_PROCESSING][0].bucket_counts) == 6


def test_gauges_read_calibration_and_in_flight(rig):
    recs = scripted(rig)
    ex = Exchange(rig.rt)  # one exchange still open on the short pool
    ex.handle(request_headers())
    ex.handle(request_body(chat(max_tokens=5)))
    m = rig.points()
    prose = rig.rt.router.calibrator.categories()["prose"]
    assert prose.samples == 3
    assert by_attrs(m[n.M_SAMPLES])[(("category", "prose"),)] == 3
    assert by_attrs(m[n.M_MEAN])[(("category", "prose"),)] == pytest.approx(prose.mean)
    assert by_attrs(m[n.M_DEVIATION])[(("category", "prose"),)] == pytest.approx(prose.dev)
    assert by_attrs(m[n.M_SAMPLES])[(("category", "code"),)] == 0  # every enabled category is reported
    assert by_attrs(m[n.M_RATIO]) == {(("category", "prose"),): pytest.approx(ex.record.ratio)}
    assert ex.record.ratio != recs[0].ratio  # it did learn, and the gauge follows
    assert by_attrs(m[n.M_IN_FLIGHT]) == {(("pool", "short"),): 1, (("pool", "long"),): 0}
    ex.close()
    assert by_attrs(rig.points()[n.M_IN_FLIGHT]) == {(("pool", "short"),): 0, (("pool", "long"),): 0}


async def test_live_load_pressure_on_the_span_and_scrape_metrics():
    """A real emulated vLLM holding 5 requests on 4 slots: the span says which pressure decided, and
    the metrics show the scraped load, the scrape's age and the failures of a garbage endpoint."""
    cfg = EmulatorConfig(port=0, latency_scale=50.0, max_num_seqs=4, max_model_len=4096, kv_cache_tokens=1 << 22)
    emu = await start_emulator(cfg)  # a cache so large its use stays below the queue's pressure
    for _ in range(5):
        emu.emulator.engine.submit(100, 1000, "length")
    garbage = "127.0.0.1:9"  # discard port: nothing listens, every scrape fails as unreachable
    rig = make_rig(live_load={"short_endpoints": [f"127.0.0.1:{emu.port}", garbage], "scrape_interval_s": 0.05})
    scraper = build_scraper(rig.rt.router.pressure, rig.rt.cfg.live_load)  # type: ignore[arg-type]
    rig.rt.scraper = scraper
    await scraper.start()
    try:
        await until_async(
            lambda: "short" in scraper.stats.load and bool(scraper.stats.failures),
            "a good scrape and a failed one",
        )
        ex, _ = run(rig.rt, chat(max_tokens=5), (200, "application/json", usage_json(60, 5)))
    finally:
        await scraper.stop()
        await emu.close()
    # 4 running + 1 waiting on the answering half of 2 x 128 slots (spillover.short_capacity 256 default)
    a = rig.finished_spans()[0].attributes
    assert a[n.PRESSURE_SOURCE] == "live" and a[n.SHORT_PRESSURE] == pytest.approx(5 / 128)
    assert a[n.LONG_PRESSURE] == 0.0  # no long endpoints: the local count, nothing in flight
    m = rig.points()
    assert by_attrs(m[n.M_POOL_RUNNING]) == {(("pool", "short"),): 4.0}
    assert by_attrs(m[n.M_POOL_WAITING]) == {(("pool", "short"),): 1.0}
    assert 0 <= by_attrs(m[n.M_SCRAPE_AGE])[(("pool", "short"),)] < 1.0
    assert by_attrs(m[n.M_SCRAPE_FAILURES])[(("cause", "unreachable"), ("pool", "short"))] >= 1
    assert by_attrs(m[n.M_LOCAL_FALLBACKS])[(("pool", "long"),)] >= 1
    assert by_attrs(m[n.M_PRESSURE])[(("pool", "short"),)] == pytest.approx(5 / 128)
    assert ex.record.pressure_source == "live"


# -- logs ------------------------------------------------------------------------------------------
def test_json_decision_line_carries_decision_outcome_and_trace_id():
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    logger = logging.getLogger("test.telemetry.decisions")
    handler = Collect()
    handler.setFormatter(JsonLinesFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        rig = make_rig(decisions=DecisionLog(json_lines=True, logger=logger))
        run(rig.rt, chat(max_tokens=100), (200, "application/json", usage_json(60)), headers={"x-request-id": "r-1"})
    finally:
        logger.removeHandler(handler)
    [span] = rig.finished_spans()
    [line] = lines
    doc = orjson.loads(line)
    assert doc["msg"] == "exchange" and doc["level"] == "INFO" and doc["logger"] == logger.name
    assert doc["trace_id"] == format(span.context.trace_id, "032x") and doc["request_id"] == "r-1"
    assert (doc["pool"], doc["reason"], doc["category"], doc["status"]) == ("short", "threshold", "prose", 200)
    assert doc["prompt_tokens"] == 60 and doc["usage_source"] == "json" and doc["processing_us"] > 0
    assert doc["estimate_error_pct"] == pytest.approx(span.attributes[n.ESTIMATE_ERROR_PCT])


def test_logs_only_still_name_the_callers_trace(caplog):
    observer = TelemetryObserver(decisions=DecisionLog(json_lines=False))
    rt = RouterRuntime.from_config(load_config(env={}, overrides={"calibration": {"state_file": ""}}), observer)
    with caplog.at_level(logging.INFO, "budget_router.decisions"):
        _, first = run(rt, chat(max_tokens=5), metadata=(("traceparent", METADATA_TP),))
    [msg] = [r.getMessage() for r in caplog.records if r.name == "budget_router.decisions"]
    assert f"trace_id={ENVOY_TRACE}" in msg and "pool=short" in msg and "reason=threshold" in msg
    assert "traceparent" not in set_headers(first.request_headers.response.header_mutation)  # no tracing: no injection


# -- through the real gRPC server -----------------------------------------------------------------
async def test_grpc_server_hands_metadata_context_to_the_span(tmp_path):
    rig = make_rig()
    server = RouterServer(rig.rt)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            call = epg.ExternalProcessorStub(ch).Process(metadata=(("traceparent", METADATA_TP),))
            answers = []
            for msg in (
                request_headers(),
                request_body(chat(max_tokens=5)),
                response_headers(),
                response_body(usage_json(60)),
            ):
                await call.write(msg)
                answers.append(await call.read())
            await call.done_writing()
            assert await call.read() is grpc.aio.EOF
    finally:
        await server.stop(1.0)
    [span] = rig.finished_spans()
    assert format(span.parent.span_id, "016x") == ENVOY_SPAN and format(span.context.trace_id, "032x") == ENVOY_TRACE
    sent = set_headers(answers[0].request_headers.response.header_mutation)
    assert sent["traceparent"] == f"00-{ENVOY_TRACE}-{span.context.span_id:016x}-01"
    assert span.attributes[n.GEN_AI_INPUT_TOKENS] == 60
    assert by_attrs(rig.points()[n.M_USAGE])[(("source", "json"),)] == 1


UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("where", ["header", "metadata"])
def test_unsampled_parent_costs_no_span_but_keeps_the_trace_id_for_logs(where, caplog):
    rig = make_rig(parent_based=True, decisions=DecisionLog(json_lines=False))
    kw = {"headers": {"traceparent": UNSAMPLED}} if where == "header" else {"metadata": (("traceparent", UNSAMPLED),)}
    with caplog.at_level(logging.INFO, "budget_router.decisions"):
        _, first = run(rig.rt, chat(max_tokens=5), (200, "application/json", usage_json(60)), **kw)
    assert rig.finished_spans() == []
    assert "traceparent" not in set_headers(first.request_headers.response.header_mutation)
    assert "0af7651916cd43dd8448eb211c80319c" in caplog.text


def test_sampled_or_malformed_parent_still_gets_a_span():
    rig = make_rig(parent_based=True)
    run(rig.rt, chat(max_tokens=5), (200, "application/json", usage_json(60)), headers={"traceparent": SAMPLED})
    run(rig.rt, chat(max_tokens=5), (200, "application/json", usage_json(60)), headers={"traceparent": "00-zz-01"})
    assert len(rig.finished_spans()) == 2


def test_responses_api_is_labelled_by_endpoint_in_metrics_and_spans(rig):
    body = orjson.dumps({"model": "m", "input": "hello " * 50})  # no max_output_tokens
    usage = orjson.dumps({"object": "response", "model": "m", "usage": {"input_tokens": 60, "output_tokens": 3}})
    ex, _ = run(rig.rt, body, (200, "application/json", usage), path="/v1/responses")
    assert (ex.record.endpoint, ex.record.usage_source, ex.record.prompt_tokens) == ("responses", "json", 60)
    m = rig.points()
    counted = {k: v for k, v in by_attrs(m[n.M_REQUESTS]).items() if v}  # the 0 series: their own test
    assert counted == {(("endpoint", "responses"), ("pool", "short"), ("reason", "threshold")): 1}
    assert {k: v for k, v in by_attrs(m[n.M_NO_MAX_TOKENS]).items() if v} == {(("endpoint", "responses"),): 1}
    [span] = rig.finished_spans()
    assert span.name == "chat m" and span.attributes[n.ENDPOINT] == "responses"
    assert (span.attributes[n.GEN_AI_INPUT_TOKENS], span.attributes[n.GEN_AI_OUTPUT_TOKENS]) == (60, 3)


def test_net_retries_are_counted_by_outcome_and_the_span_names_both_pools(rig):
    def retried(status: int, answer: bytes) -> None:
        ex = Exchange(rig.rt)
        ex.handle(request_headers())
        ex.handle(request_body(chat(max_tokens=10)))
        ex.handle(response_headers(status, extra={"x-budget-attempts": "2"}))
        ex.handle(response_body(answer))
        ex.close()

    retried(200, usage_json(70))
    retried(200, usage_json(71))
    retried(400, orjson.dumps({"error": {"message": "n must be an integer", "code": 400}}))
    m = rig.points()
    assert by_attrs(m[n.M_RETRIES]) == {
        (("category", "prose"), ("outcome", "served")): 2,
        (("category", "prose"), ("outcome", "rejected")): 1,
    }
    span = rig.finished_spans()[0]
    assert span.attributes[n.POOL] == "short"  # the router's choice (attempt 1)
    assert (span.attributes[n.ATTEMPTS], span.attributes[n.SERVED_POOL]) == (2, "long")
    assert span.attributes[n.GEN_AI_INPUT_TOKENS] == 70  # learned from the long pool's answer


def test_a_truncation_by_the_short_context_is_counted_on_the_span_and_in_the_decision_line():
    records: list[logging.LogRecord] = []
    logger = logging.getLogger("test.truncation")
    handler = _Collect(records)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    rig = make_rig(decisions=DecisionLog(json_lines=True, logger=logger))
    m = rig.points()
    assert by_attrs(m[n.M_TRUNCATIONS])[(("category", "prose"), ("pool", "short"))] == 0  # from the start
    choice = {"index": 0, "finish_reason": "length", "message": {"content": "x"}}
    cut = orjson.dumps({"choices": [choice], "usage": {"prompt_tokens": 8000, "completion_tokens": 192}})
    try:
        run(rig.rt, chat(max_tokens=500), (200, "application/json", cut))  # 8000 + 192 = 8192 < 8000 + 500
        run(rig.rt, chat(max_tokens=500), (200, "application/json", usage_json(80, 500)))
    finally:
        logger.removeHandler(handler)
    assert by_attrs(rig.points()[n.M_TRUNCATIONS])[(("category", "prose"), ("pool", "short"))] == 1
    spans = rig.finished_spans()
    assert spans[0].attributes[n.CONTEXT_TRUNCATED] is True and n.CONTEXT_TRUNCATED not in spans[1].attributes
    lines = [r.fields for r in records]  # type: ignore[attr-defined]
    assert [line["context_truncated"] for line in lines] == [True, False]


def test_engine_counts_are_exported_by_outcome_from_zero(rig):
    from extproc.server.engine_count import OUTCOMES, EngineCounter

    assert n.M_ENGINE_COUNTS not in rig.points()  # off: no series
    rig.rt.counter = EngineCounter(lambda _pool: [], 0.02, 4)
    rig.rt.counter.outcomes["timeout"] += 2
    counts = by_attrs(rig.points()[n.M_ENGINE_COUNTS])
    assert counts == {(("outcome", o),): 2 if o == "timeout" else 0 for o in OUTCOMES}


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__()
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


def test_state_file_problems_are_counted_from_zero(rig, tmp_path):
    from extproc.server.state_store import StateStore

    path = tmp_path / "state.json"
    store = StateStore(str(path), "me")
    rig.observer.attach(rig.rt, store)
    m = rig.points()
    assert [p.value for p in m[n.M_STATE_SKIPPED]] == [0] and [p.value for p in m[n.M_STATE_SYNC_FAILURES]] == [0]
    path.write_bytes(orjson.dumps({"replicas": {"a": {"updated": [1]}, "b": {"updated": "soon"}}}))
    store.sync(rig.rt.router.calibrator)
    path.unlink()
    path.mkdir()
    store.sync(rig.rt.router.calibrator)
    m = rig.points()
    assert [p.value for p in m[n.M_STATE_SKIPPED]] == [2] and [p.value for p in m[n.M_STATE_SYNC_FAILURES]] == [1]


# -- the router's own failures ----------------------------------------------------------------------
class BuggyObserver(TelemetryObserver):
    """A router bug on the request-body path: the hook raises past the exchange (real code path)."""

    def decided(self, record: ExchangeRecord) -> None:
        super().decided(record)
        raise RuntimeError("router bug")


async def test_a_router_bug_ends_the_stream_with_a_grpc_error_counted_and_logged_with_the_trace(caplog):
    rig = make_rig()
    buggy = BuggyObserver(rig.observer.spans, rig.observer.metrics, None)
    rig.rt.observer = buggy
    buggy.attach(rig.rt)
    assert by_attrs(rig.points()[n.M_ERRORS])[(("phase", "request_body"),)] == 0  # known up front
    server = RouterServer(rig.rt)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as ch:
            call = epg.ExternalProcessorStub(ch).Process(metadata=(("traceparent", METADATA_TP),))
            await call.write(request_headers(extra={"x-request-id": "req-1"}))
            await call.read()
            with caplog.at_level(logging.ERROR, "budget_router.service"):
                await call.write(request_body(chat(max_tokens=5)))
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call.read()
            assert err.value.code() == grpc.StatusCode.INTERNAL
    finally:
        await server.stop(1.0)
    assert by_attrs(rig.points()[n.M_ERRORS])[(("phase", "request_body"),)] == 1
    assert ENVOY_TRACE in caplog.text and "req-1" in caplog.text and "router bug" in caplog.text
    [span] = rig.finished_spans()
    assert span.status.status_code == StatusCode.ERROR
    assert server.processor.active == 0 and rig.rt.router.pressure.in_flight["short"] == 0


# -- trace context as Envoy sampled it --------------------------------------------------------------
UNSAMPLED_ENVOY = f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-00"
SAMPLED_CLIENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
UNSAMPLED_CLIENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-00"


def test_envoys_unsampled_decision_wins_over_a_clients_sampled_header():
    """Envoy at 0 %: no router span, no sampled context upstream, the trace id is Envoy's."""
    rig = make_rig(parent_based=True, decisions=DecisionLog(json_lines=False))
    _, first = run(
        rig.rt,
        chat(max_tokens=5),
        (200, "application/json", usage_json(60)),
        headers={"traceparent": SAMPLED_CLIENT},
        metadata=(("traceparent", UNSAMPLED_ENVOY),),
    )
    assert rig.finished_spans() == []
    assert "traceparent" not in set_headers(first.request_headers.response.header_mutation)


def test_non_uuid_request_id_envoy_sampled_client_unsampled_still_gets_a_span_linked_to_the_client():
    rig = make_rig(parent_based=True)
    _, first = run(
        rig.rt,
        chat(max_tokens=5),
        headers={"traceparent": UNSAMPLED_CLIENT, "x-request-id": "not-a-uuid-123"},
        metadata=(("traceparent", METADATA_TP),),
    )
    [span] = rig.finished_spans()
    assert (format(span.parent.trace_id, "032x"), format(span.parent.span_id, "016x")) == (ENVOY_TRACE, ENVOY_SPAN)
    [link] = span.links
    assert (format(link.context.trace_id, "032x"), format(link.context.span_id, "016x")) == (CALLER_TRACE, CALLER_SPAN)
    sent = set_headers(first.request_headers.response.header_mutation)
    assert sent["traceparent"].startswith(f"00-{ENVOY_TRACE}-") and sent["traceparent"].endswith("-01")


def test_same_trace_in_both_places_is_no_link():
    rig = make_rig()
    run(
        rig.rt,
        chat(max_tokens=5),
        headers={"traceparent": f"00-{ENVOY_TRACE}-{CALLER_SPAN}-01"},
        metadata=(("traceparent", METADATA_TP),),
    )
    [span] = rig.finished_spans()
    assert format(span.parent.span_id, "016x") == ENVOY_SPAN and not span.links


def test_two_traceparent_headers_the_first_wins_as_in_envoy():
    from envoy.config.core.v3 import base_pb2
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

    rig = make_rig()
    pairs = [
        (":method", "POST"),
        (":path", "/v1/chat/completions"),
        ("content-type", "application/json"),
        ("traceparent", HEADER_TP),
        ("traceparent", f"00-{ENVOY_TRACE}-{ENVOY_SPAN}-01"),
    ]
    headers = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs])
    ex = Exchange(rig.rt)
    ex.handle(ep.ProcessingRequest(request_headers=ep.HttpHeaders(headers=headers)))
    ex.handle(request_body(chat(max_tokens=5)))
    ex.close()
    [span] = rig.finished_spans()
    assert format(span.parent.trace_id, "032x") == CALLER_TRACE


def test_captured_content_is_capped_with_a_marker_and_stays_valid_json():
    from extproc.telemetry.spans import TRUNCATED

    rig = make_rig(capture_content=True)
    rig.observer.spans.content_max_bytes = 4096
    big = "x" * (3 * 1024 * 1024)  # within server.max_request_body_bytes
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": big},
        {"role": "user", "content": "tail"},
    ]
    run(rig.rt, orjson.dumps({"model": "m", "max_tokens": 5, "messages": messages}))
    [span] = rig.finished_spans()
    text = span.attributes[n.GEN_AI_INPUT_MESSAGES]
    assert len(text.encode()) <= 4096
    parsed = orjson.loads(text)
    assert parsed[0] == {"role": "system", "parts": [{"type": "text", "content": "be brief"}]}
    assert parsed[-1]["parts"][-1]["content"].endswith(TRUNCATED)
    assert span.attributes[n.CONTENT_TRUNCATED] is True


def test_genai_message_format_for_parts_tools_and_completions():
    from extproc.telemetry.spans import input_messages

    body = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "text", "text": "hi"}, {"type": "image_url", "image_url": {"url": "u"}}],
            },
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
        ]
    }
    text, truncated = input_messages(orjson.dumps(body), 1 << 20)
    assert not truncated
    assert orjson.loads(text) == [
        {
            "role": "user",
            "parts": [{"type": "text", "content": "hi"}, {"type": "uri", "modality": "image", "uri": "u"}],
        },
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": {"a": 1}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]},
    ]
    responses = {
        "instructions": "be brief",
        "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ],
    }
    text, _ = input_messages(orjson.dumps(responses), 1 << 20)
    assert orjson.loads(text) == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "hi"}]},
        {"role": "assistant", "parts": [{"type": "tool_call", "id": "c1", "name": "f", "arguments": {}}]},
        {"role": "tool", "parts": [{"type": "tool_call_response", "id": "c1", "response": "42"}]},
    ]
    text, _ = input_messages(orjson.dumps({"input": "hello"}), 1 << 20)
    assert orjson.loads(text) == [{"role": "user", "parts": [{"type": "text", "content": "hello"}]}]
    text, _ = input_messages(orjson.dumps({"prompt": ["a", "b"]}), 1 << 20)
    assert orjson.loads(text) == [
        {"role": "user", "parts": [{"type": "text", "content": "a"}, {"type": "text", "content": "b"}]}
    ]


def test_every_known_counter_series_starts_at_zero(rig):
    m = rig.points()
    assert [p.value for p in m[n.M_SPILLOVERS]] == [0]
    assert by_attrs(m[n.M_REJECTED]) == {(("cause", c),): 0 for c in ("invalid", "out_of_bounds", "outlier")}
    assert by_attrs(m[n.M_NO_MAX_TOKENS]) == {(("endpoint", e),): 0 for e in ("chat", "completions", "responses")}
    sources = ("json", "sse", "overflow_400", "overflow_400_bound")
    assert by_attrs(m[n.M_USAGE]) == {(("source", s),): 0 for s in sources}
    assert by_attrs(m[n.M_UNPARSEABLE])[(("detail", "invalid_json"),)] == 0
    assert by_attrs(m[n.M_UNPARSEABLE])[(("detail", "bad_messages"),)] == 0
    requests = by_attrs(m[n.M_REQUESTS])
    assert requests[(("endpoint", "responses"), ("pool", "short"), ("reason", "threshold"))] == 0
    assert requests[(("endpoint", "other"), ("pool", "long"), ("reason", "unparseable"))] == 0


def test_a_rejected_observation_reports_no_estimate_error(rig):
    ex, _ = run(rig.rt, chat(max_tokens=5), (200, "application/json", usage_json(10**9)))
    assert ex.record.observation == "out_of_bounds" and ex.record.estimate_error_pct is None
    [span] = rig.finished_spans()
    assert n.ESTIMATE_ERROR_PCT not in span.attributes


def test_spans_name_the_genai_provider(rig):
    run(rig.rt, chat(max_tokens=5))
    [span] = rig.finished_spans()
    assert span.attributes[n.GEN_AI_PROVIDER] == "vllm"


def test_the_known_label_sets_cover_every_value_the_code_emits():
    import inspect
    import re

    from extproc.algorithm import request_shape
    from extproc.server import exchange

    shape_src, exchange_src = inspect.getsource(request_shape), inspect.getsource(exchange)
    assert set(re.findall(r'ShapeError\("(\w+)"', shape_src)) == set(request_shape.SHAPE_ERROR_REASONS)
    details = set(re.findall(r'_route_unreadable\(UNPARSEABLE, "(\w+)"\)', exchange_src))
    assert details <= set(exchange.UNPARSEABLE_DETAILS) and details
    sources = set(re.findall(r'self\._observe_usage\(.*"(\w+)"\)', exchange_src))
    assert sources == set(exchange.USAGE_SOURCES)


# -- what telemetry asks the exchange to follow ---------------------------------------------------
def test_only_a_span_or_a_decision_log_keeps_an_unfollowed_exchange_open():
    """An unsampled request that cannot fail for its size ends at the decision, unless telemetry
    records its status: a traced exchange's span, or a decision log line."""

    def decided_exchange(observer: TelemetryObserver) -> Exchange:
        overrides = {"calibration": {"state_file": "", "converged_sample_rate": 0.0}}
        rt = RouterRuntime.from_config(load_config(env={}, overrides=overrides), observer)
        rt.router.calibrator.load({"prose": {"mean": 4.5, "dev": 0.1, "samples": 500}})
        ex = Exchange(rt)
        ex.handle(request_headers())
        ex.handle(request_body(chat(max_tokens=5)))
        return ex

    traced = make_rig()
    assert not decided_exchange(traced.observer).done
    assert decided_exchange(TelemetryObserver(metrics=traced.observer.metrics)).done  # metrics alone: closed
    assert not decided_exchange(TelemetryObserver(decisions=DecisionLog(json_lines=False))).done
