"""Readiness probes: whatever answers on a port, a probe says ready or not, it never raises."""

from __future__ import annotations

import socket
import threading

from extproc.stack.probes import http_get, http_ok


def test_a_server_that_does_not_speak_http1_reads_as_not_ready() -> None:
    """A gRPC (HTTP/2) server on a port the probe expected a pool on answers with binary frames."""
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x05\x00\x00@\x00\r\n\r\n")

        t = threading.Thread(target=answer_garbage, daemon=True)
        t.start()
        assert http_get(f"http://127.0.0.1:{port}/health") == (0, b"")
        t.join(5)


def test_nothing_listening_reads_as_not_ready() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert not http_ok(f"http://127.0.0.1:{port}/health")
