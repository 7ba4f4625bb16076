"""Envoy ext_proc message shapes: read headers out of, and build responses into, the v3 protos.

Kept apart from the exchange logic so that the only code that knows Envoy's wire types is here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeAlias

from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

# xds-protos ships no type stubs: the generated classes are untyped, so their aliases are ``Any`` to
# mypy. Only this module touches their fields; the exchange gets the plain values below.
ProcessingRequest: TypeAlias = Any
ProcessingResponse: TypeAlias = Any
ProcessingMode = processing_mode_pb2.ProcessingMode
OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


@dataclass(frozen=True, slots=True)
class Headers:
    """One headers phase, request or response: lower-cased names and whether a body follows."""

    headers: dict[str, str]
    end_of_stream: bool


@dataclass(frozen=True, slots=True)
class Body:
    """One body chunk (all of it when buffered) and whether it is the last."""

    data: bytes
    end_of_stream: bool


def phase_of(req: ProcessingRequest) -> str:
    """Which phase a message carries: ``request_headers``, ``request_body``, ... (its oneof's name)."""
    return str(req.WhichOneof("request"))


def decode(req: ProcessingRequest) -> tuple[str, Headers | Body | None]:
    """The phase and its payload as plain values; trailers (and an unset message) carry none."""
    phase = phase_of(req)
    if phase in ("request_headers", "response_headers"):
        msg = getattr(req, phase)
        return phase, Headers(header_map(msg), bool(msg.end_of_stream))
    if phase in ("request_body", "response_body"):
        msg = getattr(req, phase)
        return phase, Body(msg.body, bool(msg.end_of_stream))
    return phase, None


def header_map(headers: Any) -> dict[str, str]:
    """Lower-case name -> value. Envoy sends ``raw_value`` bytes (``value`` only from old Envoys).

    A repeated header keeps its first value, as Envoy's own lookups do (its tracer reads the first
    ``traceparent``): the router must read the same context Envoy acted on."""
    out: dict[str, str] = {}
    for h in headers.headers.headers:
        out.setdefault(h.key.lower(), h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value)
    return out


def header_mutation(
    set_headers: Mapping[str, str] | None = None, remove: Iterable[str] = ()
) -> ep.HeaderMutation | None:
    if not set_headers and not remove:
        return None
    return ep.HeaderMutation(
        set_headers=[
            base_pb2.HeaderValueOption(
                header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=OVERWRITE
            )
            for k, v in (set_headers or {}).items()
        ],
        remove_headers=list(remove),
    )


def common(
    set_headers: Mapping[str, str] | None = None,
    remove: Iterable[str] = (),
    body: bytes | None = None,
    clear_route_cache: bool = False,
) -> ep.CommonResponse:
    resp = ep.CommonResponse(clear_route_cache=clear_route_cache)
    mutation = header_mutation(set_headers, remove)
    if mutation is not None:
        resp.header_mutation.CopyFrom(mutation)
    if body is not None:
        resp.body_mutation.body = body
    return resp


def request_headers_response(c: ep.CommonResponse | None = None, skip_bodies: bool = False) -> ep.ProcessingResponse:
    """``skip_bodies``: an empty mode override, which Envoy reads as request and response bodies NONE
    (headers SEND, trailers SKIP): the request body is never sent, the response headers still are."""
    resp = ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=c or ep.CommonResponse()))
    if skip_bodies:
        resp.mode_override.SetInParent()
    return resp


def request_body_response(c: ep.CommonResponse | None = None) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(request_body=ep.BodyResponse(response=c or ep.CommonResponse()))


def response_headers_response(
    c: ep.CommonResponse | None = None, response_body_mode: int | None = None
) -> ep.ProcessingResponse:
    resp = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=c or ep.CommonResponse()))
    if response_body_mode is not None:
        resp.mode_override.response_body_mode = response_body_mode
    return resp


def response_body_response(body: bytes | None = None) -> ep.ProcessingResponse:
    return ep.ProcessingResponse(response_body=ep.BodyResponse(response=common(body=body)))


@lru_cache(maxsize=256)
def shared(
    phase: str,
    set_items: tuple[tuple[str, str], ...] = (),
    remove: tuple[str, ...] = (),
    clear_route_cache: bool = False,
    response_body_mode: int | None = None,
) -> ep.ProcessingResponse:
    """One prebuilt answer per distinct content, shared by every stream that sends it.

    Almost every answer is one of a few (the routing header's values, a bare continue, "no body"):
    building each anew was a sixth of the router's own CPU per exchange. The result must never be
    mutated: grpc only serialises it. Answers that carry per-request content (a trace header, a
    rewritten body) are built by the functions above instead."""
    c = common(dict(set_items), remove, clear_route_cache=clear_route_cache)
    if phase == "request_headers":
        return request_headers_response(c)
    if phase == "request_body":
        return request_body_response(c)
    if phase == "response_headers":
        return response_headers_response(c, response_body_mode)
    if phase == "response_body":
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=c))
    raise ValueError(f"no shared answer for phase {phase!r}")


def trailers_response(request: bool) -> ep.ProcessingResponse:
    if request:
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
    return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


STREAMED = ProcessingMode.STREAMED
NONE = ProcessingMode.NONE
