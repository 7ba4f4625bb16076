"""Deviations from vLLM's clean SSE framing that a proxy's stream parser must survive.

Real upstreams (other servers, load balancers, a server dying) send CRLF line ends, comment lines as
keep-alives, events split at any byte, broken ``data:`` payloads, no usage chunk, or cut the
connection mid-stream. The emulator produces each on demand (``stream_quirk``) so the router's
reassembler can be tested against a real HTTP peer rather than canned bytes.
"""

from __future__ import annotations

KEEP_ALIVE = b": keep-alive\n\n"
BROKEN_EVENT = b'data: {"id": "broken", "choices": [\n\n'


def shape(quirk: str, data: bytes) -> list[bytes]:
    """The writes that carry ``data`` (whole events) under ``quirk``."""
    if quirk == "crlf":
        return [data.replace(b"\n", b"\r\n")]
    if quirk == "comments":
        events = data.split(b"\n\n")[:-1]
        return [b"".join(KEEP_ALIVE + event + b"\n\n" for event in events)]
    if quirk == "byte_split":
        return [data[i : i + 1] for i in range(len(data))]
    return [data]


def tail(quirk: str, usage_event: bytes, done: bytes) -> bytes:
    """The end of the stream (usage chunk, then [DONE]) under ``quirk``, before ``shape``."""
    if quirk == "no_usage":
        usage_event = b""
    elif quirk == "bad_json":
        usage_event = BROKEN_EVENT + usage_event
    return usage_event + done


def cut_after(quirk: str, output_tokens: int) -> int | None:
    """Tokens after which the connection is dropped (no [DONE]), or None to finish normally."""
    return max(1, output_tokens // 2) if quirk == "truncate" else None
