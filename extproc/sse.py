"""Server-sent-event scanning for usage, robust to any chunking.

Envoy hands STREAMED response bodies over in arbitrary chunks: an event, a line, even the word
``usage`` can be split across two. We keep the unfinished tail and only ever look at complete
lines/events, take the *last* usage seen (some servers repeat it on every chunk), and never raise:
garbage, comments, keep-alives and ``[DONE]`` are skipped. Optionally the usage-only event that the
router itself asked for (``include_usage`` injection) is removed so clients that did not ask for it
see exactly what they would have seen without the router.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_SPLIT = re.compile(rb"\r\n|\n|\r")
_SEPARATORS = (b"\n\n", b"\r\n\r\n", b"\r\r")


def _usage_of(payload: bytes) -> tuple[dict[str, Any] | None, bool, str | None]:
    """(usage dict or None, whether the event is a usage-only chunk with no choices, model)."""
    if b"usage" not in payload:
        return None, False, None
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None, False, None
    if not isinstance(obj, dict):
        return None, False, None
    usage, model = obj.get("usage"), obj.get("model")
    if not isinstance(usage, dict):
        return None, False, None
    return usage, obj.get("choices") == [], model if isinstance(model, str) else None


def _data_payloads(event: bytes) -> list[bytes]:
    out = []
    for line in _LINE_SPLIT.split(event):
        if line.startswith(b"data:"):
            out.append(line[6:] if line[5:6] == b" " else line[5:])
    return out


class SseUsageScanner:
    def __init__(self, max_pending: int = 1 << 20, strip_usage_only: bool = False) -> None:
        self.max_pending = max_pending
        self.strip = strip_usage_only
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.overflowed = False  # a line longer than max_pending: scanning stopped, bytes pass through
        self._pending = b""

    def _scan_events(self, complete: bytes) -> bytes | None:
        """Process complete events; return the bytes to emit when stripping, else None."""
        kept: list[bytes] = []
        pos = 0
        for m in _EVENT_END.finditer(complete):
            event = complete[pos : m.end()]
            pos = m.end()
            drop = False
            if b"usage" in event:
                for payload in _data_payloads(event):
                    usage, usage_only, model = _usage_of(payload)
                    if usage is not None:
                        self.usage, self.model = usage, model or self.model
                        drop = drop or (self.strip and usage_only)
            if not drop:
                kept.append(event)
        return b"".join(kept) if self.strip else None

    def feed(self, chunk: bytes) -> bytes | None:
        """Consume one chunk. Returns replacement bytes for it when stripping is on, else None."""
        if self.overflowed:
            return chunk if self.strip else None
        data = self._pending + chunk if self._pending else chunk
        cut = max((i + len(sep) for sep in _SEPARATORS if (i := data.rfind(sep)) >= 0), default=-1)
        if cut < 0:
            complete, self._pending = b"", data
        else:
            complete, self._pending = data[:cut], data[cut:]
        if len(self._pending) > self.max_pending:
            # One event larger than we are willing to hold: stop scanning, never block the client.
            self.overflowed = True
            held, self._pending = self._pending, b""
            return (self._scan_events(complete) or b"") + held if self.strip else None
        if not self.strip:
            if b"usage" in complete:
                self._scan_events(complete)
            return None
        return self._scan_events(complete) if complete else b""

    def finish(self) -> bytes:
        """End of stream: scan an unterminated final event too; return any bytes still held."""
        tail, self._pending = self._pending, b""
        if not tail or self.overflowed:
            return tail if self.strip else b""
        emitted = self._scan_events(tail + b"\n\n")
        if not self.strip:
            return b""
        return tail if emitted else b""
