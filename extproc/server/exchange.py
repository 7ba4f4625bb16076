"""One HTTP exchange as Envoy streams it to us: request headers, body, response headers, body.

Pure message-in/message-out logic (no gRPC here), so it is tested directly and driven by the gRPC
service. Rules it keeps:
- the routing header is ours: a client copy is removed at request headers, ours set at request body;
- anything we cannot read is routed long (the safe pool) with reason ``unparseable``, never failed;
- bodies are only sent back when changed (include_usage injection, usage-chunk stripping);
- the routing policy is the router's: each request is one ``BudgetRouter.route`` call (a
  ``Ticket``) and one ``finish`` call with what came back. The response status (one small message,
  with the attempt count of Envoy's net) is seen when the router ``follows`` the ticket: every
  observed one, and the others that might fail for their size; the rest end at the decision (the
  stream is closed cleanly after the request body: "the data plane proceeds without consulting the
  server", two messages, the cheapest flow). The body is only read when the router ``wants`` it
  (``extproc.server.outcome``), else the stream is closed right after the response headers;
- observers get frozen events (``Decided``, ``Observed``, ``ExchangeRecord``); the exchange never
  reads them back.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

from extproc.algorithm import BudgetRouter, Estimate, Outcome, RequestShape, ShapeError, Ticket, endpoints
from extproc.algorithm.dispatch import NO_BODY, SHORT, TOO_COMPLEX, UNPARSEABLE
from extproc.algorithm.pressure import LOCAL, LivePressure
from extproc.algorithm.request_shape import SHAPE_ERROR_REASONS, TOO_COMPLEX_DETAILS, TooComplex, check_structure
from extproc.config import Config
from extproc.server import envoy_wire as em
from extproc.server.body_budget import BODY_BUDGET, BodyBudget
from extproc.server.engine_count import tokenize_payload
from extproc.server.events import (
    REQUEST_ID_HEADER,
    Decided,
    ExchangeObserver,
    ExchangeRecord,
    Observed,
    envoy_traceparent,
    trace_id_of,
)
from extproc.server.outcome import Read, response_view, served_pool, what_to_read
from extproc.server.overflow import overflow_count
from extproc.server.sse import SseUsageScanner
from extproc.server.usage import json_response, usage_counts

if TYPE_CHECKING:
    from extproc.server.engine_count import CountResult, EngineCounter
    from extproc.server.pool_load import PoolLoadScraper

__all__ = [
    "NO_BODY",
    "TOO_COMPLEX",
    "TOO_COMPLEX_REASONS",
    "UNPARSEABLE",
    "UNPARSEABLE_DETAILS",
    "USAGE_SOURCES",
    "Exchange",
    "RouterRuntime",
    "endpoint_of",
    "inject_include_usage",
]
_keys = itertools.count(1)
# Known up front, so every metric series exists from 0 (tests check the code uses no others).
UNPARSEABLE_DETAILS = ("unknown_endpoint", "body_too_large", "encoded_body", "invalid_json", *SHAPE_ERROR_REASONS)
USAGE_SOURCES = ("json", "sse", "overflow_400", "overflow_400_bound")
TOO_COMPLEX_REASONS = (*TOO_COMPLEX_DETAILS, BODY_BUDGET)  # the too_complex details


@dataclass
class RouterRuntime:
    """Process-wide state shared by all exchanges of one router process."""

    cfg: Config
    router: BudgetRouter
    observer: ExchangeObserver = field(default_factory=ExchangeObserver)
    scraper: PoolLoadScraper | None = None  # set by serve when live_load is configured
    counter: EngineCounter | None = None  # set by serve when estimator.engine_counts is on
    bodies: BodyBudget = field(default_factory=lambda: BodyBudget(0))  # sized from cfg in __post_init__

    def __post_init__(self) -> None:
        if not self.bodies.limit_bytes:
            self.bodies = BodyBudget(self.cfg.server.max_held_body_bytes)

    @classmethod
    def from_config(cls, cfg: Config, observer: ExchangeObserver | None = None) -> RouterRuntime:
        from extproc.router_factory import build_router

        return cls(cfg, build_router(cfg), observer or ExchangeObserver())


def endpoint_of(method: str, path: str) -> str | None:
    """The routed API's name (``extproc.algorithm.endpoints``), or None: not parsed, goes long."""
    api = endpoints.by_path(method, path)
    return None if api is None else api.name


def _declared_length(headers: dict[str, str]) -> int:
    """The request's content-length, 0 when absent or not a number (the body itself then tells)."""
    value = headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() else 0


def inject_include_usage(raw: bytes, body: dict[str, Any]) -> bytes | None:
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


@dataclass(frozen=True, slots=True)
class CountWanted:
    """The exchange waits for an engine count: ``pool``'s engine, asked with ``payload``."""

    pool: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class _Pending:
    raw: bytes
    body: dict[str, Any]
    shape: RequestShape
    estimate: Estimate
    endpoint: str


class Exchange:
    def __init__(self, rt: RouterRuntime, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self.rt = rt
        self.metadata = metadata
        self.ticket: Ticket | None = None  # set once the pool is decided
        self.done = False  # True: nothing more to do; the service closes the stream cleanly
        self._reading = False  # the router wants this response's outcome (usage, an error's count)
        self._finished = False  # the ticket went back to the router's finish()
        self._key = next(_keys)
        self._headers: dict[str, str] = {}
        self._method = self._path = ""
        self._body_bytes = 0
        self._request_body: bytes | None = None
        self._status = 0
        self._attempts = 1
        self._served_pool = ""
        self._response_model: str | None = None
        self._decided: Decided | None = None
        self._observed: Observed | None = None
        self._phases: dict[str, float] = {}
        self._sse: SseUsageScanner | None = None
        self._json_parts: list[bytes] = []
        self._json_size = 0
        self._held = 0  # bytes of this exchange's bodies counted in the runtime's BodyBudget
        self._closed = False
        # Set by on_request_body when the router wants the engine's count first: the caller awaits
        # it (``EngineCounter.count``) and hands it to ``counted`` for the request body's answer.
        self.count_wanted: CountWanted | None = None
        self._pending: _Pending | None = None
        self._count: CountResult | None = None

    @property
    def record(self) -> ExchangeRecord:
        """The exchange as far as it got, frozen (what observers are handed at start and finish)."""
        return ExchangeRecord(
            key=self._key,
            method=self._method,
            path=self._path,
            decision=self._decided,
            outcome=self._observed,
            status=self._status,
            attempts=self._attempts,
            served_pool=self._served_pool,
            response_model=self._response_model,
            phase_seconds=MappingProxyType(dict(self._phases)),
        )

    # -- dispatch ------------------------------------------------------------------------------
    def handle(self, req: em.ProcessingRequest) -> em.ProcessingResponse | None:
        """The answer to one ext_proc message; None only for a request body whose engine count is
        wanted first (``count_wanted``): the answer then comes from ``counted``."""
        t0 = time.perf_counter()
        kind, payload = em.decode(req)
        if isinstance(payload, em.Headers):
            resp = self.on_request_headers(payload) if kind == "request_headers" else self.on_response_headers(payload)
        elif isinstance(payload, em.Body):
            resp = self.on_request_body(payload) if kind == "request_body" else self.on_response_body(payload)
        else:
            resp = em.trailers_response(request=kind == "request_trailers")
        phases = self._phases
        phases[kind] = phases.get(kind, 0.0) + time.perf_counter() - t0
        return resp

    # -- request -------------------------------------------------------------------------------
    def on_request_headers(self, msg: em.Headers) -> em.ProcessingResponse:
        cfg = self.rt.cfg.routing
        self._headers = h = msg.headers
        self._method, self._path = h.get(":method", ""), h.get(":path", "")
        observer = self.rt.observer
        rec = ExchangeRecord(self._key, self._method, self._path)
        observer.started(rec, h, self.metadata)
        upstream = observer.upstream_headers(rec)  # per request (a trace header) or nothing
        set_headers = dict(upstream)
        if cfg.force_identity_encoding:
            set_headers["accept-encoding"] = "identity"
        remove = [cfg.header_name] + ([cfg.reason_header] if cfg.reason_header else [])
        if msg.end_of_stream:  # no body will come: decide now, nothing to observe in the answer
            self._route_unreadable(NO_BODY, "request has no body")
            set_headers.update(self._routing_headers())
            self.done = True  # not an LLM request: its response has nothing to teach
        elif _declared_length(h) > self.rt.cfg.server.max_request_body_bytes:
            # Too big to read, and its content-length says so: decide now and ask Envoy not to send
            # the body at all (an empty mode override: request and response bodies NONE), so a flood
            # of huge bodies costs the router a headers message each, not their bytes.
            self._body_bytes = _declared_length(h)
            self._route_unreadable(UNPARSEABLE, "body_too_large")
            set_headers.update(self._routing_headers())
            return em.request_headers_response(em.common(set_headers, remove, clear_route_cache=True), skip_bodies=True)
        if not upstream:  # config and decision only: one of a few answers
            return em.shared("request_headers", tuple(set_headers.items()), tuple(remove), clear_route_cache=True)
        return em.request_headers_response(em.common(set_headers, remove, clear_route_cache=True))

    def on_request_body(self, msg: em.Body) -> em.ProcessingResponse | None:
        if self.ticket is not None:  # decided at the headers (an Envoy that ignored the override)
            return em.request_body_response()
        raw = msg.data
        self._body_bytes = len(raw)
        if self.rt.cfg.telemetry.capture_content:
            self._request_body = raw
        new_body = self._route_body(raw)
        if self.count_wanted is not None:
            return None
        return self._request_body_response(new_body)

    def counted(self, result: CountResult) -> em.ProcessingResponse:
        """The engine count (or why there is none) is in: route with it and answer the request body."""
        pending, self._pending, self.count_wanted = self._pending, None, None
        assert pending is not None, "counted() without a wanted count"
        t0 = time.perf_counter()
        self._count = result
        est = None  # no count: route as without counts (the offline exact band may count it)
        if result.count is not None:
            est = self.rt.router.with_engine_count(pending.shape, pending.estimate, result.count)
        new_body = self._route_shape(pending.raw, pending.body, pending.shape, pending.endpoint, est)
        resp = self._request_body_response(new_body)
        self._phases["request_body"] = self._phases.get("request_body", 0.0) + time.perf_counter() - t0
        return resp

    def _request_body_response(self, new_body: bytes | None) -> em.ProcessingResponse:
        set_headers = self._routing_headers()
        if new_body is None:
            return em.shared("request_body", tuple(set_headers.items()), clear_route_cache=True)
        set_headers["content-length"] = str(len(new_body))
        return em.request_body_response(em.common(set_headers, body=new_body, clear_route_cache=True))

    def _route_body(self, raw: bytes) -> bytes | None:
        """Decide the pool (or want an engine count first); returns a replacement body when we changed
        it, else None."""
        scfg = self.rt.cfg.server
        endpoint = endpoint_of(self._method, self._path)
        if endpoint is None:
            self._route_unreadable(UNPARSEABLE, "unknown_endpoint")
            return None
        if len(raw) > scfg.max_request_body_bytes:
            self._route_unreadable(UNPARSEABLE, "body_too_large")
            return None
        if self._headers.get("content-encoding", "identity").lower() not in ("identity", ""):
            self._route_unreadable(UNPARSEABLE, "encoded_body")
            return None
        if not self._hold(len(raw)):
            self._route_unreadable(TOO_COMPLEX, BODY_BUDGET)
            return None
        try:
            check_structure(raw)  # before parsing: a body of 500,000 tiny objects is slow to parse at all
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            self._route_unreadable(UNPARSEABLE, "invalid_json")
            return None
        except TooComplex as exc:
            self._route_unreadable(TOO_COMPLEX, exc.reason)
            return None
        try:
            shape = self.rt.router.shape(endpoint, body)
        except ShapeError as exc:
            self._route_unreadable(TOO_COMPLEX if isinstance(exc, TooComplex) else UNPARSEABLE, exc.reason)
            return None
        est = None
        if self.rt.counter is not None:  # the engine counts the few requests no estimate can place
            est = self.rt.router.estimate_request(shape, exact=False)
            pool = self.rt.router.engine_count_pool(shape, est)
            payload = tokenize_payload(shape, body) if pool is not None else None
            if pool is not None and payload is not None:
                self.count_wanted = CountWanted(pool, payload)
                self._pending = _Pending(raw, body, shape, est, endpoint)
                return None
            est = None if est.in_band else est  # in the band but not countable: the exact band may count it
        return self._route_shape(raw, body, shape, endpoint, est)

    def _route_shape(
        self, raw: bytes, body: dict[str, Any], shape: RequestShape, endpoint: str, est: Estimate | None
    ) -> bytes | None:
        """Route a readable request (with the estimate made already, if any); returns a replacement
        body when we changed it, else None."""
        rcfg = self.rt.cfg.routing
        ticket = self.ticket = self.rt.router.route(shape, estimate=est)
        self._reading = ticket.observe  # an unobserved ticket still shows its status, see on_response_headers
        new_body = None
        if ticket.observe and shape.stream and not shape.client_include_usage and rcfg.inject_include_usage:
            new_body = inject_include_usage(raw, body)
        self._decide(ticket, endpoint, "", injected=new_body is not None)
        return new_body

    def _route_unreadable(self, reason: str, detail: str) -> None:
        """The safe route for a request we cannot read; ``detail`` names why."""
        self.ticket = self.rt.router.route(None, reason)
        self._decide(self.ticket, "", detail, injected=False)

    def _decide(self, ticket: Ticket, endpoint: str, detail: str, injected: bool) -> None:
        key, method, path, nbytes, body = self._key, self._method, self._path, self._body_bytes, self._request_body
        pressure = self.rt.router.pressure
        source = "" if ticket.shape is None else pressure.source[SHORT] if isinstance(pressure, LivePressure) else LOCAL
        count = self._count
        counted = ("", 0.0) if count is None else (count.outcome, count.seconds)
        self._decided = Decided(key, method, path, endpoint, detail, nbytes, injected, body, source, ticket, *counted)
        observer = self.rt.observer
        observer.decided(self._decided)
        if not (self.rt.router.follows(ticket) or self.rt.cfg.server.follow_every_status):
            self.done = not observer.follows_response(self._decided)  # nothing more to learn or record

    def _routing_headers(self) -> dict[str, str]:
        cfg = self.rt.cfg.routing
        pool, reason = (self.ticket.decision.pool, self.ticket.decision.reason) if self.ticket else ("", "")
        out = {cfg.header_name: cfg.short_value if pool == SHORT else cfg.long_value}
        if cfg.reason_header:
            out[cfg.reason_header] = reason
        return out

    # -- response ------------------------------------------------------------------------------
    def on_response_headers(self, msg: em.Headers) -> em.ProcessingResponse:
        h = msg.headers
        view = response_view(h)
        self._status, self._attempts = view.status, view.attempts
        wanted = usage_in_stream = injected = False
        ticket = self.ticket
        if ticket is not None:
            ticket = self.ticket = self.rt.router.moved(ticket, served_pool(ticket.decision.pool, view))
            self._served_pool = ticket.pool
            wanted = self.rt.router.wants(ticket, view.status)
            self._reading = self._reading or wanted  # an unobserved ticket's error or retried answer
            shape, decided = ticket.shape, self._decided
            injected = decided is not None and decided.include_usage_injected
            usage_in_stream = shape is not None and (shape.client_include_usage or injected)
        strip = view.sse and injected and self.rt.cfg.routing.strip_injected_usage
        read = what_to_read(view, wanted, usage_in_stream)
        if view.sse and (read is Read.SSE or strip):
            self._sse = SseUsageScanner(self.rt.cfg.server.max_response_buffer_bytes, strip_usage_only=strip)
            remove = ("content-length",) if "content-length" in h else ()
            return em.shared("response_headers", remove=remove, response_body_mode=em.STREAMED)
        if read is Read.JSON:
            return em.shared("response_headers")  # stay BUFFERED: usage or the error's count is in the body
        self.done = True  # nothing more to learn: close cleanly, Envoy proceeds without us
        return em.shared("response_headers", response_body_mode=em.NONE)

    def on_response_body(self, msg: em.Body) -> em.ProcessingResponse:
        if self._sse is not None:
            out = self._sse.feed(msg.data)
            if msg.end_of_stream:
                tail = self._sse.finish()
                out = (out or b"") + tail if out is not None or tail else None
                self._response_model = self._sse.model
                self._observe_usage(*usage_counts(self._sse.usage), length_stop=self._sse.length_stop, source="sse")
            if out is not None and out == msg.data:
                out = None
            return em.response_body_response(out) if out is not None else em.shared("response_body")
        # Buffered JSON (or an SSE body Envoy did not let us switch to STREAMED).
        if self._json_size <= self.rt.cfg.server.max_response_buffer_bytes and self._hold(len(msg.data)):
            self._json_parts.append(msg.data)
            self._json_size += len(msg.data)
        if msg.end_of_stream:
            self._observe_json(b"".join(self._json_parts))
        return em.shared("response_body")

    def _observe_json(self, body: bytes) -> None:
        if self._status >= 400:
            found = overflow_count(body)
            if found is not None and found.exact:
                self._observe_usage(found.prompt_tokens, None, "overflow_400")
            elif found is not None:  # "at least N": learned as a bound only
                self._observe_usage(found.prompt_tokens, None, lower_bound=True, source="overflow_400_bound")
        elif body.lstrip().startswith(b"data:"):
            scanner = SseUsageScanner(self.rt.cfg.server.max_response_buffer_bytes)
            scanner.feed(body)
            scanner.finish()
            self._response_model = scanner.model
            self._observe_usage(*usage_counts(scanner.usage), length_stop=scanner.length_stop, source="sse")
        else:
            prompt, completion, self._response_model, stopped = json_response(body)
            self._observe_usage(prompt, completion, length_stop=stopped, source="json")

    def _observe_usage(
        self,
        prompt: int | None,
        completion: int | None,
        source: str,
        lower_bound: bool = False,
        length_stop: bool = False,
    ) -> None:
        """The response's usage is in: the ticket is finished with it (once; later copies are ignored),
        and the router says whether the pool cut the answer at its context."""
        if prompt is None or not self._reading or self._finished or self.ticket is None or self._decided is None:
            return
        self._finished = True
        outcome = Outcome(prompt, completion, self._status, lower_bound, length_stop=length_stop)
        truncated = self.rt.router.truncated(self.ticket, outcome)
        # The engine's own count of a request the estimate misplaced is the best sample there is
        # (``Outcome.trusted``): the long pool's after the net moved it, or a short answer the context cut.
        moved = self.ticket.pool != self.ticket.decision.pool and self._status < 400 and not lower_bound
        outcome = replace(outcome, trusted=moved or truncated)
        learned = self.rt.router.finish(self.ticket, outcome)
        self._observed = Observed(self._decided, source, outcome, learned, truncated)
        self.rt.observer.observed(self._observed)

    def _hold(self, nbytes: int) -> bool:
        """Count ``nbytes`` more of this exchange's bodies against the process-wide budget."""
        if not self.rt.bodies.take(nbytes):
            return False
        self._held += nbytes
        return True

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
        self.rt.bodies.give(self._held)
        self._held = 0
        if not self._finished and self.ticket is not None:  # ended without usage (client gone, none read)
            self._finished = True
            self.rt.router.finish(self.ticket)
        self.rt.observer.finished(self.record)
