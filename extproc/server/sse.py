"""Server-sent-event scanning for usage, robust to any chunking.

Envoy hands STREAMED response bodies over in arbitrary chunks: an event, a line, even the word
``usage`` can be split across two. The scanner follows the SSE grammar line by line (``\\r\\n``,
``\\n`` or ``\\r`` end a line; an empty line ends an event; ``data:`` lines of one event are joined
with ``\\n``), keeps only the unfinished line, takes the *last* usage seen (some servers repeat it on
every chunk), and never raises: garbage, comments, keep-alives and ``[DONE]`` are skipped.
Optionally the usage-only event that the router itself asked for (``include_usage`` injection) is
removed, so clients that did not ask for it see exactly the bytes they would have seen without the
router (every other byte, line endings included, passes through unchanged).
Responses API streams (``/v1/responses``) nest it: the final ``response.completed`` event carries
``{"response": {"usage": {"input_tokens", "output_tokens"}, "model"}}``; earlier events have
``"usage": null`` there and are skipped like any other event without usage.
"""

from __future__ import annotations

import re
from typing import Any

from extproc.server.usage import length_stop, model_of, usage_object

_LINE_END = re.compile(rb"\r\n|\n|\r")
_LENGTH = b'"length"'  # a chunk that may end a choice at its length: parsed although it carries no usage


def _usage_of(payload: bytes) -> tuple[dict[str, Any] | None, bool, str | None, bool]:
    """(usage dict or None, whether the event is a usage-only chunk with no choices, model, whether
    a sequence stopped at its length)."""
    obj = usage_object(payload)
    if obj is None:
        if _LENGTH not in payload:
            return None, False, None, False
        obj = usage_object(payload, needle=_LENGTH)
        return None, False, None, obj is not None and length_stop(obj)
    usage, model, stopped = obj.get("usage"), model_of(obj), length_stop(obj)
    if usage is None and isinstance(obj.get("response"), dict):  # Responses API: response.completed
        usage, model, stopped = obj["response"].get("usage"), model_of(obj["response"]), length_stop(obj["response"])
    if not isinstance(usage, dict):
        return None, False, None, stopped
    return usage, obj.get("choices") == [], model, stopped


class SseUsageScanner:
    def __init__(self, max_pending: int = 1 << 20, strip_usage_only: bool = False) -> None:
        self.max_pending = max_pending
        self.strip = strip_usage_only
        self.usage: dict[str, Any] | None = None
        self.model: str | None = None
        self.overflowed = False  # an event larger than max_pending: scanning stopped, bytes pass through
        self.length_stop = False  # some sequence finished with "length" (truncation evidence)
        self._pending = b""  # an unfinished line
        self._event_raw: list[bytes] = []  # raw lines of the current event (only kept when stripping)
        self._event_size = 0
        self._data: list[bytes] = []  # data field values of the current event

    def _end_event(self, out: list[bytes]) -> None:
        drop = False
        if self._data:
            payload = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
            usage, usage_only, model, stopped = _usage_of(payload)
            self.length_stop = self.length_stop or stopped
            if usage is not None:
                self.usage, self.model = usage, model or self.model
                drop = self.strip and usage_only
        if self.strip and not drop:
            out.extend(self._event_raw)
        self._event_raw, self._event_size, self._data = [], 0, []

    def _line(self, line: bytes, raw: bytes, out: list[bytes]) -> None:
        if self.strip:
            self._event_raw.append(raw)
        self._event_size += len(raw)
        if not line:
            self._end_event(out)
        elif line.startswith(b"data:"):
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])

    def feed(self, chunk: bytes) -> bytes | None:
        """Consume one chunk. Returns replacement bytes for it when stripping is on, else None."""
        if self.overflowed:
            return chunk if self.strip else None
        data = self._pending + chunk if self._pending else chunk
        out: list[bytes] = []
        pos = 0
        for m in _LINE_END.finditer(data):
            if m.end() == len(data) and data[m.start()] == 13:  # a final "\r" may be half of "\r\n"
                break
            self._line(data[pos : m.start()], data[pos : m.end()], out)
            pos = m.end()
        self._pending = data[pos:]
        if self._event_size + len(self._pending) > self.max_pending:
            # One event larger than we are willing to hold: stop scanning, never block the client.
            self.overflowed = True
            out.extend(self._event_raw)
            out.append(self._pending)
            self._pending, self._event_raw, self._data = b"", [], []
        return b"".join(out) if self.strip else None

    def finish(self) -> bytes:
        """End of stream: an unterminated last line and event count too; returns bytes still held."""
        out: list[bytes] = []
        if not self.overflowed:
            if self._pending:
                line = self._pending[:-1] if self._pending.endswith(b"\r") else self._pending
                self._line(line, self._pending, out)
                self._pending = b""
            if self._event_raw or self._data:
                self._end_event(out)
        return b"".join(out) if self.strip else b""
