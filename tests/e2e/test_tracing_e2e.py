"""One trace through the real Envoy: Envoy's span (exported by Envoy's own OpenTelemetry tracer)
is the parent of the router's span, and the pool's request carries the same trace.

Envoy and the router both export to a real OTLP/gRPC receiver started by the test; the router
learns Envoy's context from the ext_proc gRPC metadata, also when the client sends its own
``traceparent`` (Envoy continues that trace, and its span stays the router's parent).

Request ids are UUIDs: Envoy's default request-id extension only samples a request whose
``x-request-id`` is a UUID, and it rewrites one nibble of it (position 14) to record the decision.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from extproc.config import TelemetryConfig
from extproc.stack.stack import Stack, child_env
from tests.conftest import start_stack
from tests.e2e.client import MODEL
from tests.e2e.console import running_up
from tests.test_telemetry_setup import OtlpTraceReceiver

pytestmark = pytest.mark.e2e

ROUTER_SERVICE = "budget-router-e2e"
ENVOY_SERVICE = "envoy-budget-router"  # EnvoyLayout.service_name
CLIENT_TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "10f067aa0ba902b7"


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, OtlpTraceReceiver]]:
    with pytest.MonkeyPatch.context() as mp, OtlpTraceReceiver() as receiver:
        mp.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")  # the router exports within 0.1 s
        flags = [
            "--telemetry-traces", "true",
            "--telemetry-otlp-endpoint", f"127.0.0.1:{receiver.port}",
            "--telemetry-service-name", ROUTER_SERVICE,
            # The router believes the short pool holds 60k tokens: a long prompt is a forced miss the
            # net resends to the long pool (test_a_retried_request_shows_both_attempts).
            "--routing-short-context", "65536", "--routing-b-short", "60000",
        ]  # fmt: skip
        overrides = {"otlp": ("127.0.0.1", receiver.port)}
        with start_stack(tmp_path_factory, "tracing", router_flags=flags, layout_overrides=overrides) as stack:
            yield stack, receiver


def chat(stack: Stack, request_id: str, headers: dict[str, str] | None = None, repeat: int = 20) -> dict:
    content = "Trace me, please. " * repeat
    body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": content}]}
    req = urllib.request.Request(
        stack.url + "/v1/chat/completions",
        data=orjson.dumps(body),
        headers={"content-type": "application/json", "x-request-id": request_id, **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return orjson.loads(resp.read())


def same_request(seen: str | None, sent: str) -> bool:
    """Envoy's copy of a UUID request id differs from the client's in the sampling nibble only."""
    return seen is not None and len(seen) == len(sent) and seen[:14] + seen[15:] == sent[:14] + sent[15:]


def upstream_traceparents(stack: Stack) -> dict[str, str]:
    """x-request-id -> traceparent of the requests the short pool received."""
    with urllib.request.urlopen(stack.pool_url("short") + "/admin/requests?limit=50", timeout=10) as resp:
        return {
            r["headers"].get("x-request-id", ""): r["headers"]["traceparent"]
            for r in orjson.loads(resp.read())["requests"]
        }


def upstream_traceparent(stack: Stack, request_id: str) -> str:
    [tp] = [tp for rid, tp in upstream_traceparents(stack).items() if same_request(rid, request_id)]
    return tp


def router_span_for(spans, request_id: str, router_service: str = ROUTER_SERVICE):
    """The router's span of the request whose Envoy span carries ``request_id`` (guid:x-request-id)."""
    for service, span in spans:
        attrs = {a.key: a.value.string_value for a in span.attributes}
        if service == ENVOY_SERVICE and same_request(attrs.get("guid:x-request-id"), request_id):
            envoy_trace = span.trace_id
            break
    else:
        return None, None
    mine = [s for svc, s in spans if svc == router_service and s.trace_id == envoy_trace]
    return (mine[0] if mine else None), envoy_trace


def test_router_span_is_a_child_of_envoys_span(traced):
    stack, receiver = traced
    request_id = str(uuid.uuid4())
    reply = chat(stack, request_id)
    assert reply["usage"]["prompt_tokens"] > 0

    def complete(spans) -> bool:
        return router_span_for(spans, request_id)[0] is not None

    spans = receiver.wait_for(complete, timeout=20)  # Envoy flushes its spans every 5 s
    router, trace_id = router_span_for(spans, request_id)
    assert router is not None, f"spans seen: {[(svc, s.name) for svc, s in spans]}"
    envoy_ids = {s.span_id for svc, s in spans if svc == ENVOY_SERVICE and s.trace_id == trace_id}
    assert router.parent_span_id in envoy_ids  # parent: Envoy's span, learned from the gRPC metadata
    assert router.kind == router.SPAN_KIND_SERVER
    attrs = {a.key: a.value for a in router.attributes}
    assert attrs["budget_router.pool"].string_value == "short"
    assert attrs["gen_ai.usage.input_tokens"].int_value == reply["usage"]["prompt_tokens"]
    # The pool's request belongs to the same trace (vLLM's own spans would join it).
    assert upstream_traceparent(stack, request_id).split("-")[1] == trace_id.hex()


def test_a_client_traceparent_joins_its_trace_under_envoys_span(traced):
    """Envoy continues the client's trace; its span (in the gRPC metadata, same trace) is the parent."""
    stack, receiver = traced
    chat(stack, str(uuid.uuid4()), {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
    trace = bytes.fromhex(CLIENT_TRACE)

    def done(spans) -> bool:
        mine = [s for svc, s in spans if svc == ROUTER_SERVICE and s.trace_id == trace]
        envoy = {s.span_id for svc, s in spans if svc == ENVOY_SERVICE and s.trace_id == trace}
        return bool(mine) and mine[0].parent_span_id in envoy

    spans = receiver.wait_for(done, timeout=20)  # Envoy flushes its spans every 5 s
    [router] = [s for svc, s in spans if svc == ROUTER_SERVICE and s.trace_id == trace]
    envoy_ids = {s.span_id for svc, s in spans if svc == ENVOY_SERVICE and s.trace_id == trace}
    assert router.parent_span_id in envoy_ids and not router.links
    assert any(tp.split("-")[1] == CLIENT_TRACE for tp in upstream_traceparents(stack).values())


def test_up_otlp_traces_envoy_and_the_router_together(tmp_path: Path) -> None:
    """``budget-router up --otlp`` alone turns tracing on in both: one trace, Envoy's span the parent."""
    env = {**child_env(), "OTEL_BSP_SCHEDULE_DELAY": "100"}
    with OtlpTraceReceiver() as receiver:
        collector = f"127.0.0.1:{receiver.port}"
        args = ("--latency-scale", "0", "--run-dir", str(tmp_path / "run"), "--otlp", collector)
        with running_up(*args, env=env) as (console, url):
            console.wait_for(rf"traces \(OTLP/gRPC\):\s+{re.escape(collector)}", 5)
            request_id = str(uuid.uuid4())
            body = {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": "Trace me. " * 20}]}
            req = urllib.request.Request(
                url + "/v1/chat/completions",
                data=orjson.dumps(body),
                headers={"content-type": "application/json", "x-request-id": request_id},
            )
            with urllib.request.urlopen(req, timeout=30) as resp:
                assert resp.status == 200
            service = TelemetryConfig().service_name  # up sets no service name of its own
            spans = receiver.wait_for(lambda sp: router_span_for(sp, request_id, service)[0] is not None, timeout=20)
            router, trace_id = router_span_for(spans, request_id, service)
            assert router is not None, f"spans seen: {[(svc, sp.name) for svc, sp in spans]}"
            envoy_ids = {sp.span_id for svc, sp in spans if svc == ENVOY_SERVICE and sp.trace_id == trace_id}
            assert router.parent_span_id in envoy_ids


def test_a_retried_request_shows_both_attempts(traced):
    stack, receiver = traced
    request_id = str(uuid.uuid4())
    reply = chat(stack, request_id, repeat=3_000)  # ~15k tokens: routed short, rejected, resent long
    assert reply["usage"]["prompt_tokens"] > 8192

    def egress(spans, trace_id) -> list[str]:
        """Envoy's upstream spans to the pools ("router <cluster> egress"), not its ext_proc call's."""
        return sorted(
            s.name
            for svc, s in spans
            if svc == ENVOY_SERVICE and s.trace_id == trace_id and s.name.startswith("router ") and "egress" in s.name
        )

    def complete(spans) -> bool:
        router, trace_id = router_span_for(spans, request_id)
        return router is not None and len(egress(spans, trace_id)) == 2

    spans = receiver.wait_for(complete, timeout=20, what="the router's span and both pool attempts")
    router, trace_id = router_span_for(spans, request_id)
    names = egress(spans, trace_id)
    assert any("pool_short" in name for name in names) and any("pool_long" in name for name in names), names
    attrs = {a.key: a.value for a in router.attributes}
    assert attrs["budget_router.pool"].string_value == "short"
    assert attrs["budget_router.attempts"].int_value == 2
    assert attrs["budget_router.served_pool"].string_value == "long"
