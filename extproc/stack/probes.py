"""Readiness probes for the stack's processes and a loopback port finder. All are quick, blocking and
never raise: a probe answers yes or no, and the supervisor decides how long to keep asking."""

from __future__ import annotations

import http.client
import socket
import urllib.error
import urllib.request

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out and released; callers retry on the rare reuse race."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_free(host: str, port: int) -> bool:
    """Whether ``port`` can be bound now (a preferred port such as 9464 is taken only when free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_open(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port (used to prove ports were freed)."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def http_get(url: str, timeout_s: float = 1.0) -> tuple[int, bytes]:
    """(status, body); status 0 when nothing answered, or something that does not speak HTTP/1.1 did
    (e.g. a gRPC server that won the race for a just-freed port): that is "not ready", never a crash."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError, http.client.HTTPException):
        return 0, b""


def http_ok(url: str) -> bool:
    return http_get(url)[0] == 200


def grpc_serving(address: str, service: str = EXT_PROC_SERVICE, timeout_s: float = 1.0) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            # the stubs declare Check on the servicer only; the stub sets it per instance
            resp = stub.Check(  # type: ignore[attr-defined]
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s
            )
    except grpc.RpcError:
        return False
    return resp.status == health_pb2.HealthCheckResponse.SERVING


def envoy_host_healthy(admin_url: str, cluster: str, host: str, port: int) -> bool:
    """Whether Envoy's own health checking currently counts ``host:port`` in ``cluster`` as healthy."""
    status, body = http_get(f"{admin_url}/clusters")
    if status != 200:
        return False
    key = f"{cluster}::{host}:{port}::health_flags::"
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(key):
            return line[len(key) :].strip() == "healthy"
    return False
