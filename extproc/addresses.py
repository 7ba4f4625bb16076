"""Addresses as operators write them (``host:port``, ``[v6]:port``, a URL), parsed in one place for the
config's validation, the Envoy renderer, live load's scraper and ``up``. A leaf module: everything
above it may import it, it imports nothing of the project."""

from __future__ import annotations

from urllib.parse import urlsplit

Endpoint = tuple[str, int]


def check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"{what}: port {port!r} is not in 1..65535")


def parse_endpoint(text: str) -> Endpoint:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError with the offending text otherwise."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    check_port(int(port), text)
    return host, int(port)


def metrics_url(endpoint: str, path: str = "/metrics") -> str:
    """``host:port`` or a URL without a path -> the metrics URL; a URL with a path is kept as is."""
    if "://" not in endpoint:
        endpoint = "http://" + endpoint
    parts = urlsplit(endpoint)
    try:
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ValueError(f"not an endpoint: {endpoint!r} (bad port)") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an endpoint: {endpoint!r} (want host:port or an http(s) URL)")
    return endpoint if parts.path not in ("", "/") else endpoint.rstrip("/") + path
