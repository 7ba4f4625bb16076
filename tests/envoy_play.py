"""Build the ProcessingRequest messages Envoy sends, so tests can play Envoy's part exactly."""

from __future__ import annotations

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep


def _headers(pairs: dict[str, str], eos: bool) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()]
        ),
        end_of_stream=eos,
    )


def request_headers(path="/v1/chat/completions", method="POST", extra=None, eos=False) -> ep.ProcessingRequest:
    h = {":method": method, ":path": path, ":authority": "gw", "content-type": "application/json", **(extra or {})}
    return ep.ProcessingRequest(request_headers=_headers(h, eos))


def request_body(body: bytes, eos=True) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(request_body=ep.HttpBody(body=body, end_of_stream=eos))


def response_headers(status=200, content_type="application/json", extra=None) -> ep.ProcessingRequest:
    h = {":status": str(status), "content-type": content_type, **(extra or {})}
    return ep.ProcessingRequest(response_headers=_headers(h, False))


def response_body(body: bytes, eos=True) -> ep.ProcessingRequest:
    return ep.ProcessingRequest(response_body=ep.HttpBody(body=body, end_of_stream=eos))


def set_headers(mutation: ep.HeaderMutation) -> dict[str, str]:
    return {o.header.key: (o.header.raw_value or o.header.value.encode()).decode() for o in mutation.set_headers}
