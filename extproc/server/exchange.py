"""One HTTP exchange as Envoy streams it to us: request headers, body, response headers, body.

Pure message-in/message-out logic (no gRPC here), so it is tested directly and driven by the gRPC
service. Rules it keeps:
- the routing header is ours: a client copy is removed at request headers, ours set at request body;
- anything we cannot read is routed long (the safe pool) with reason ``unparseable``, never failed;
- bodies are only sent back when changed (include_usage injection, usage-chunk stripping);
- responses are only followed when the calibrator wants a sample: otherwise the stream is closed
  cleanly right after the routing decision ("the data plane proceeds without consulting the server"),
  which saves Envoy and us the response-phase messages, and the pool counts a lease instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson

from extproc.algorithm import BudgetRouter, RequestShape, ShapeError, shape_from_body
from extproc.algorithm.dispatch import LONG, SHORT
from extproc.algorithm.pressure import LOCAL, InFlightPressure, LivePressure
from extproc.algorithm.request_shape import CHAT, COMPLETIONS, RESPONSES, SHAPE_ERROR_REASONS
from extproc.config import Config
from extproc.server import envoy_wire as em
from extproc.server.events import REQUEST_ID_HEADER, ExchangeObserver, ExchangeRecord, envoy_traceparent, trace_id_of
from extproc.server.sse import SseUsageScanner
from extproc.server.usage import json_response, overflow_prompt_tokens, usage_counts

if TYPE_CHECKING:
    from extproc.server.pool_load import PoolLoadScraper

UNPARSEABLE = "unparseable"
NO_BODY = "no_body"
# Known up front, so every metric series exists from 0 (tests check the code uses no others).
UNPARSEABLE_DETAILS = ("body_too_large", "encoded_body", "invalid_json", *SHAPE_ERROR_REASONS)
USAGE_SOURCES = ("json", "sse", "overflow_400")


@dataclass
class RouterRuntime:
    """Process-wide state shared by all exchanges of one router process."""

    cfg: Config
    router: BudgetRouter
    pressure: InFlightPressure
    observer: ExchangeObserver = field(default_factory=ExchangeObserver)
    rng: random.Random = field(default_factory=random.Random)
    scraper: PoolLoadScraper | None = None  # set by serve when live_load is configured

    @classmethod
    def from_config(cls, cfg: Config, observer: ExchangeObserver | None = None) -> RouterRuntime:
        from extproc.router_factory import build_router

        capacity = {SHORT: cfg.spillover.short_capacity, LONG: cfg.spillover.long_capacity}
        live = cfg.live_load
        pressure = LivePressure(capacity, live.max_age_s) if live.enabled else InFlightPressure(capacity)
        return cls(cfg, build_router(cfg), pressure, observer or ExchangeObserver())


def endpoint_of(method: str, path: str) -> str | None:
    if method != "POST":
        return None
    path = path.split("?", 1)[0].rstrip("/")
    if path.endswith("/chat/completions"):
        return CHAT
    if path.endswith("/completions"):
        return COMPLETIONS
    if path.endswith("/responses"):
        return RESPONSES
    return None


def inject_include_usage(raw: bytes, body: dict) -> bytes | None:
    """Ask for the final usage chunk, touching the client's bytes as little as possible.

    Returns None (leave the body alone) when ``stream_options`` is present but not an object or null:
    vLLM rejects such a body, and the client must get that 400, not a repaired request.
    """
    if "stream_options" not in body:
        start = raw.index(b"{") + 1
        rest = raw[start:].lstrip()
        sep = b"" if rest.startswith(b"}") else b","
        return raw[:start] + b'"stream_options":{"include_usage":true}' + sep + raw[start:]
    opts = body["stream_options"]
    if opts is not None and not isinstance(opts, dict):
        return None
    new = dict(body)  # re-serialised: a key the client sent twice must not win over ours
    new["stream_options"] = {**(opts or {}), "include_usage": True}
    return orjson.dumps(new)


class Exchange:
    def __init__(self, rt: RouterRuntime, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.rt = rt
        self.metadata = metadata
        self.record = ExchangeRecord()
        self.shape: RequestShape | None = None
        self._estimate = None
        self._acquired: str | None = None
        self._headers: dict[str, str] = {}
        self._sse: SseUsageScanner | None = None
        self._json_parts: list[bytes] = []
        self._json_size = 0
        self._closed = False
        self._decided_at = 0.0
        self.done = False  # True: nothing more to do; the service closes the stream cleanly

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, req: em.ProcessingRequest) -> em.ProcessingResponse:
        kind = req.WhichOneof("request")
        t0 = time.perf_counter()
        if kind == "request_headers":
            resp = self.on_request_headers(req.request_headers)
        elif kind == "request_body":
            resp = self.on_request_body(req.request_body)
        elif kind == "response_headers":
            resp = self.on_response_headers(req.response_headers)
        elif kind == "response_body":
            resp = self.on_response_body(req.response_body)
        else:
            resp = em.trailers_response(request=kind == "request_trailers")
        phases = self.record.phase_seconds
        phases[kind] = phases.get(kind, 0.0) + time.perf_counter() - t0
        return resp

    # -- request -------------------------------------------------------------------------------
    def on_request_headers(self, msg: em.ep.HttpHeaders) -> em.ProcessingResponse:
        cfg = self.rt.cfg.routing
        self._headers = h = em.header_map(msg)
        rec = self.record
        rec.method, rec.path = h.get(":method", ""), h.get(":path", "")
        self.rt.observer.started(rec, h, self.metadata)
        set_headers = dict(self.rt.observer.upstream_headers(rec))
        if cfg.force_identity_encoding:
            set_headers["accept-encoding"] = "identity"
        remove = [cfg.header_name] + ([cfg.reason_header] if cfg.reason_header else [])
        if msg.end_of_stream:  # no body will come: decide now, nothing to learn from the answer
            self._decide_long(NO_BODY, "request has no body")
            set_headers.update(self._routing_headers())
            self.done = True
            return em.request_headers_response(em.common(set_headers, remove, clear_route_cache=True))
        return em.request_headers_response(em.common(set_headers, remove, clear_route_cache=True))

    def on_request_body(self, msg: em.ep.HttpBody) -> em.ProcessingResponse:
        raw = msg.body
        self.record.body_bytes = len(raw)
        if self.rt.cfg.telemetry.capture_content:
            self.record.request_body = raw
        new_body = self._route_body(raw)
        set_headers = self._routing_headers()
        if new_body is not None:
            set_headers["content-length"] = str(len(new_body))
        return em.request_body_response(em.common(set_headers, body=new_body, clear_route_cache=True))

    def _route_body(self, raw: bytes) -> bytes | None:
        """Decide the pool; returns a replacement body when we changed it, else None."""
        scfg, rcfg = self.rt.cfg.server, self.rt.cfg.routing
        endpoint = endpoint_of(self.record.method, self.record.path)
        if endpoint is None:
            return self._decide_long(UNPARSEABLE, "unknown_endpoint")
        if len(raw) > scfg.max_request_body_bytes:
            return self._decide_long(UNPARSEABLE, "body_too_large")
        if self._headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            return self._decide_long(UNPARSEABLE, "encoded_body")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._decide_long(UNPARSEABLE, "invalid_json")
        try:
            shape = shape_from_body(endpoint, body, self.rt.router.categorizer)
        except ShapeError as exc:
            return self._decide_long(UNPARSEABLE, exc.reason)
        self.shape = shape
        pressure = self.rt.pressure
        short_pressure, long_pressure = pressure.pressure(SHORT), pressure.pressure(LONG)
        est, decision = self.rt.router.route(shape, short_pressure, long_pressure)
        follow = self.record.learn = self._wants_sample()
        self._estimate = est
        rec = self.record
        rec.endpoint, rec.category, rec.model, rec.stream = endpoint, shape.category, shape.model, shape.stream
        rec.text_bytes, rec.ratio = shape.text_bytes, est.ratio
        rec.estimated_prompt_tokens, rec.estimated_total_tokens = est.prompt_tokens, est.total
        rec.output_reserve, rec.output_defaulted = est.output_tokens, est.output_defaulted
        rec.pool, rec.reason, rec.spilled = decision.pool, decision.reason, decision.spilled
        rec.short_pressure, rec.long_pressure = short_pressure, long_pressure
        rec.pressure_source = pressure.source[SHORT] if isinstance(pressure, LivePressure) else LOCAL
        self._take(decision.pool, follow)
        self.rt.observer.decided(rec)
        if follow and shape.stream and not shape.client_include_usage and rcfg.inject_include_usage:
            new_body = inject_include_usage(raw, body)
            rec.include_usage_injected = new_body is not None
            return new_body
        return None

    def _decide_long(self, reason: str, detail: str) -> None:
        rec = self.record
        rec.pool, rec.reason, rec.detail = LONG, reason, detail
        self._take(LONG, follow=False)
        self.rt.observer.decided(rec)
        return None

    def _take(self, pool: str, follow: bool) -> None:
        """Count the request against its pool: tracked to its end if followed, else leased."""
        if follow:
            self._acquired = pool
            self._decided_at = time.monotonic()
            self.rt.pressure.acquire(pool)
        else:
            self.done = True
            self.rt.pressure.lease(pool)

    def _routing_headers(self) -> dict[str, str]:
        cfg = self.rt.cfg.routing
        out = {cfg.header_name: cfg.short_value if self.record.pool == SHORT else cfg.long_value}
        if cfg.reason_header:
            out[cfg.reason_header] = self.record.reason
        return out

    # -- response ------------------------------------------------------------------------------
    def _wants_sample(self) -> bool:
        if self.shape is None or self.shape.known_prompt_tokens is not None:
            return False
        cal = self.rt.cfg.calibration
        if cal.converged_sample_rate >= 1.0 or not self.rt.router.calibrator.converged(self.shape.category):
            return True
        return self.rt.rng.random() < cal.converged_sample_rate

    def on_response_headers(self, msg: em.ep.HttpHeaders) -> em.ProcessingResponse:
        h = em.header_map(msg)
        try:
            self.record.status = int(h.get(":status", "0"))
        except ValueError:
            self.record.status = 0
        sse = h.get("content-type", "").startswith("text/event-stream")
        strip = sse and self.record.include_usage_injected and self.rt.cfg.routing.strip_injected_usage
        learn = self.record.learn
        if sse and (learn or strip):
            self._sse = SseUsageScanner(self.rt.cfg.server.max_response_buffer_bytes, strip_usage_only=strip)
            remove = ["content-length"] if "content-length" in h else []
            return em.response_headers_response(em.common(remove=remove), em.STREAMED)
        if not sse and (learn or self.record.status == 400) and self.shape is not None:
            return em.response_headers_response()  # stay BUFFERED: usage or overflow count is in the body
        return em.response_headers_response(response_body_mode=em.NONE)

    def on_response_body(self, msg: em.ep.HttpBody) -> em.ProcessingResponse:
        if self._sse is not None:
            out = self._sse.feed(msg.body)
            if msg.end_of_stream:
                tail = self._sse.finish()
                out = (out or b"") + tail if out is not None or tail else None
                self.record.response_model = self._sse.model
                self._learn(*usage_counts(self._sse.usage), "sse")
            if out is not None and out == msg.body:
                out = None
            return em.response_body_response(out)
        # Buffered JSON (or an SSE body Envoy did not let us switch to STREAMED).
        if self._json_size <= self.rt.cfg.server.max_response_buffer_bytes:
            self._json_parts.append(msg.body)
            self._json_size += len(msg.body)
        if msg.end_of_stream:
            self._learn_from_json(b"".join(self._json_parts))
        return em.response_body_response()

    def _learn_from_json(self, body: bytes) -> None:
        if self.record.status == 400:
            self._learn(overflow_prompt_tokens(body), None, "overflow_400")
        elif body.lstrip().startswith(b"data:"):
            scanner = SseUsageScanner(self.rt.cfg.server.max_response_buffer_bytes)
            scanner.feed(body)
            scanner.finish()
            self.record.response_model = scanner.model
            self._learn(*usage_counts(scanner.usage), "sse")
        else:
            prompt, completion, self.record.response_model = json_response(body)
            self._learn(prompt, completion, "json")

    def _learn(self, prompt: int | None, completion: int | None, source: str) -> None:
        rec = self.record
        if prompt is None or self.shape is None or rec.usage_source:
            return
        rec.usage_source, rec.prompt_tokens, rec.completion_tokens = source, prompt, completion
        learned = self.rt.router.learn(self.shape, prompt, self._estimate)
        rec.observation = learned.observation.value
        rec.estimate_error_pct = learned.error_pct
        self.rt.observer.learned(rec)

    def trace_and_request_id(self) -> tuple[str, str]:
        """What names this exchange in Envoy's logs and traces, for the router's own error lines."""
        trace_id = (
            self.rt.observer.trace_id(self.record) or trace_id_of(envoy_traceparent(self._headers, self.metadata)) or ""
        )
        return trace_id, self._headers.get(REQUEST_ID_HEADER, "")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._acquired is not None:
            self.rt.pressure.release(self._acquired, time.monotonic() - self._decided_at)
        self.rt.observer.finished(self.record)
