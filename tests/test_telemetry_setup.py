"""``build_observer``: what the config and the OTEL_* environment switch on, the Prometheus scrape
endpoint, and the OTLP trace export into a real OTLP/gRPC receiver."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from concurrent import futures

import grpc
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from extproc.config import TelemetryConfig, load_config
from extproc.server.events import ExchangeObserver
from extproc.server.exchange import Exchange, RouterRuntime
from extproc.telemetry import TelemetryObserver, build_observer
from extproc.telemetry.providers import otlp_endpoint, traces_enabled
from tests.envoy_play import request_body, request_headers, response_body, response_headers


class OtlpTraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A real OTLP/gRPC trace endpoint on 127.0.0.1 that keeps every span it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self._cond = threading.Condition()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def Export(self, request, context):
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, object]]:
        """(service.name, span) for every span received so far."""
        out = []
        for req in list(self.requests):
            for rs in req.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), "")
                out.extend((service, s) for ss in rs.scope_spans for s in ss.spans)
        return out

    def wait_for(self, predicate, timeout: float, what: str = "the spans") -> list[tuple[str, object]]:
        """Every span so far, once ``predicate`` holds for them; raises with the spans seen if it never does."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(spans := self.spans()):
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [(service, span.name) for service, span in spans]  # type: ignore[attr-defined]
                    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; spans seen: {seen}")
                self._cond.wait(left)
        return spans

    def __enter__(self) -> OtlpTraceReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.stop(grace=None).wait(5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port p with p + 1 also free (worker 1 listens on base + 1)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


def cfg_with(**telemetry):
    return load_config(env={}, overrides={"calibration": {"state_file": ""}, "telemetry": telemetry})


def one_exchange(rt: RouterRuntime) -> None:
    ex = Exchange(rt)
    ex.handle(request_headers())
    body = {"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hello " * 50}]}
    ex.handle(request_body(orjson.dumps(body)))
    ex.handle(response_headers())
    ex.handle(response_body(b'{"usage":{"prompt_tokens":60,"completion_tokens":3}}'))
    ex.close()


def test_everything_off_is_the_plain_observer():
    observer, shutdown = build_observer(cfg_with(metrics_port=0), env={})
    assert type(observer) is ExchangeObserver and shutdown is None


def test_sdk_disabled_turns_traces_and_metrics_off():
    env = {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}
    observer, shutdown = build_observer(cfg_with(traces=True, metrics_port=free_port()), env=env)
    assert type(observer) is ExchangeObserver and shutdown is None


@pytest.mark.parametrize(
    ("traces", "env", "on"),
    [
        (False, {}, False),
        (True, {}, True),
        (False, {"OTEL_TRACES_EXPORTER": "otlp"}, True),
        (False, {"OTEL_TRACES_EXPORTER": "console"}, True),
        (True, {"OTEL_TRACES_EXPORTER": "none"}, False),
        (True, {"OTEL_SDK_DISABLED": "TRUE"}, False),
    ],
)
def test_traces_switch(traces, env, on):
    assert traces_enabled(TelemetryConfig(traces=traces), env) is on


def test_otlp_endpoint_forms():
    assert otlp_endpoint("") is None  # exporter falls back to OTEL_EXPORTER_OTLP_*ENDPOINT
    assert otlp_endpoint("otel-collector:4317") == "http://otel-collector:4317"
    assert otlp_endpoint("https://collector.example:4317") == "https://collector.example:4317"


def test_prometheus_endpoint_serves_router_metrics_and_closes_on_shutdown():
    port = free_port()
    cfg = cfg_with(metrics_port=port)
    observer, shutdown = build_observer(cfg, env={})
    assert isinstance(observer, TelemetryObserver) and shutdown is not None
    rt = RouterRuntime.from_config(cfg, observer)
    observer.attach(rt)
    try:
        one_exchange(rt)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        shutdown()
    assert 'budget_router_requests_total{endpoint="chat",pool="short",reason="threshold"} 1.0' in text
    assert 'budget_router_usage_observations_total{source="json"} 1.0' in text
    assert 'budget_router_estimate_vs_actual_percent_bucket{category="prose",le="+Inf"} 1.0' in text
    assert 'budget_router_processing_duration_seconds_count{phase="request_body"} 1.0' in text
    assert 'budget_router_calibration_samples{category="prose"} 1.0' in text
    assert 'budget_router_in_flight{pool="short"} 0.0' in text
    assert 'service_name="budget-router"' in text  # target_info carries the resource
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_worker_index_offsets_the_metrics_port():
    base = free_port_pair()
    cfg = cfg_with(metrics_port=base)
    observer, shutdown = build_observer(cfg, worker=1, env={})
    try:
        one_exchange(RouterRuntime.from_config(cfg, observer))
        body = urllib.request.urlopen(f"http://127.0.0.1:{base + 1}/metrics", timeout=5).read()
        assert b'budget_router_worker="1"' in body and b"budget_router_requests_total" in body
    finally:
        assert shutdown is not None
        shutdown()


def test_busy_metrics_port_is_refused_naming_the_option():
    """Before: only logged, and the router ran without the metrics an operator asked for."""
    from extproc.config import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"telemetry\.metrics_port: cannot serve metrics on 127\.0\.0\.1:{port}"):
            build_observer(cfg_with(metrics_port=port), env={})


def test_spans_are_exported_over_otlp_with_service_name():
    with OtlpTraceReceiver() as receiver:
        cfg = cfg_with(traces=True, metrics_port=0, otlp_endpoint=f"127.0.0.1:{receiver.port}", service_name="br-test")
        observer, shutdown = build_observer(cfg, env={})
        rt = RouterRuntime.from_config(cfg, observer)
        one_exchange(rt)
        assert shutdown is not None
        shutdown()  # flushes the batch processor
        [(service, span)] = receiver.spans()
    assert service == "br-test" and span.name == "chat m"
    attrs = {a.key: a.value for a in span.attributes}
    assert attrs["budget_router.pool"].string_value == "short"
    assert attrs["gen_ai.usage.input_tokens"].int_value == 60


def test_otel_service_name_wins_over_config():
    with OtlpTraceReceiver() as receiver:
        cfg = cfg_with(traces=True, metrics_port=0, otlp_endpoint=f"127.0.0.1:{receiver.port}")
        observer, shutdown = build_observer(cfg, env={"OTEL_SERVICE_NAME": "from-env"})
        one_exchange(RouterRuntime.from_config(cfg, observer))
        assert shutdown is not None
        shutdown()
        assert [s for s, _ in receiver.spans()] == ["from-env"]


def test_fast_histogram_follows_otel_bucket_rule_and_merges_into_sdk_batches():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    from extproc.telemetry import HistogramSet, merging

    hs = HistogramSet(Resource.create({}), InstrumentationScope("t"))
    h = hs.histogram("h", "s", "d", (1.0, 2.0), "k")
    reader = merging(InMemoryMetricReader)(hs)
    MeterProvider(metric_readers=[reader]).get_meter("t").create_counter("c").add(1)
    for v in (0.5, 1.0, 1.5, 2.0, 9.0):
        h.record(v, "a")
    h.record(3.0, "b")
    data = reader.get_metrics_data()
    metrics = {m.name: m for sm in data.resource_metrics[0].scope_metrics for m in sm.metrics}
    assert set(metrics) == {"c", "h"}
    points = {p.attributes["k"]: p for p in metrics["h"].data.data_points}
    a = points["a"]
    assert list(a.bucket_counts) == [2, 2, 1]  # (-inf,1], (1,2], (2,inf): a bound belongs to its bucket
    assert (a.count, a.sum, a.min, a.max) == (5, 14.0, 0.5, 9.0)
    assert list(points["b"].bucket_counts) == [0, 0, 1]
