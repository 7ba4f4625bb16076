"""What tests ask the emulator out of band: the faults in force and the requests it received.

The request log keeps headers and a body fingerprint (size and SHA-256), never the body, so a test
can check which pool served a request, which headers a proxy injected (traceparent, routing
headers), that ``content-length`` matched the bytes, and whether ``include_usage`` was added.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from extproc.emulator.engine_args import HUGE_USAGE, FaultConfig
from extproc.emulator.errors import ERROR_TYPES, ApiError, error_body


class RequestLog:
    def __init__(self, size: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=size)
        self._ids = itertools.count(1)

    def record(self, request: web.BaseRequest, raw: bytes) -> dict[str, Any]:
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        entry: dict[str, Any] = {
            "seq": next(self._ids),
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": headers,
            "body_bytes": len(raw),
            "body_sha256": hashlib.sha256(raw).hexdigest(),
            "status": None,
        }
        self._entries.append(entry)
        return entry

    @staticmethod
    def note_body(entry: dict[str, Any], body: Mapping[str, Any]) -> None:
        """Fields a proxy may have changed on the way: stream flags and token limits as received."""
        for key in ("model", "stream", "stream_options", "max_tokens", "max_completion_tokens"):
            if key in body:
                entry[key] = body[key]

    def last(self, n: int) -> list[dict[str, Any]]:
        return list(self._entries)[-n:] if n > 0 else []

    def clear(self) -> None:
        self._entries.clear()


class Faults:
    """The live fault settings plus their own random stream (seeded, so runs repeat)."""

    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(f"faults:{seed}")

    def injected_error(self) -> web.Response | None:
        cfg = self.config
        if cfg.error_rate <= 0 or self._rng.random() >= cfg.error_rate:
            return None
        err = ApiError(
            cfg.error_status,
            f"Injected fault: the emulator answers {cfg.error_status}.",
            type=ERROR_TYPES.get(cfg.error_status, "InternalServerError"),
        )
        return web.Response(status=err.status, body=error_body(err, cfg.error_shape), content_type="application/json")

    def reported_prompt_tokens(self, true_count: int) -> int:
        lie = self.config.usage_lie
        if lie == "zero":
            return 0
        if lie == "huge":
            return HUGE_USAGE
        if lie == "random":
            return self._rng.randint(0, 10_000_000)
        return true_count

    def update(self, changes: Any) -> None:
        if not isinstance(changes, dict):
            raise ApiError(400, "fault settings must be a JSON object")
        try:
            self.config = self.config.updated(changes)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
