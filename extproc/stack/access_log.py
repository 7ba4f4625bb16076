"""Envoy's JSON access log read back: which pool served each request, and with what status.

The stack asks Envoy to flush the log every 100 ms; the replay sends its own ``x-request-id`` (Envoy
keeps it, ``preserve_external_request_id``), so every client request finds its log line, even one
Envoy served while the router was down (those never reach the router, whose view would miss them).
The log's ``pool`` field is the serving endpoint's own pool name (host metadata), so a request the
failover cluster sent to the long pool reads ``long``, not the aggregate cluster's name.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from extproc.gateway.envoy_config import CLUSTER_POOLS

POOLS = frozenset(CLUSTER_POOLS.values())


class AccessLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._pending = b""
        self.by_id: dict[str, dict[str, Any]] = {}

    def poll(self) -> int:
        """Read what Envoy appended since the last call; returns the number of new entries."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read()
        except FileNotFoundError:
            return 0
        self._offset += len(chunk)
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        added = 0
        for line in lines:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(entry, dict) and entry.get("request_id"):
                self.by_id[str(entry["request_id"])] = entry
                added += 1
        return added

    def entry(self, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The log line of one request, waiting for Envoy's next flush if needed."""
        deadline = time.monotonic() + timeout_s
        while request_id not in self.by_id:
            self.poll()
            if request_id in self.by_id:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"request {request_id} not in Envoy's access log {self.path} after {timeout_s}s")
            time.sleep(0.05)
        return self.by_id[request_id]

    def pool(self, request_id: str, timeout_s: float = 5.0) -> str:
        """``short`` / ``long``, else Envoy's cluster field as is (``-`` when no upstream was picked)."""
        self.entry(request_id, timeout_s)
        return self.pool_of(request_id)

    def pool_of(self, request_id: str) -> str:
        """Like ``pool`` but without waiting: ``none`` when Envoy logged no line for the request."""
        entry = self.by_id.get(request_id)
        if entry is None:
            return "none"
        pool = str(entry.get("pool"))
        return pool if pool in POOLS else str(entry.get("cluster") or "-")
