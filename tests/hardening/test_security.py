"""Security properties of the router, checked from outside where possible.

* The routing header and the reason header are the router's alone: client copies never reach a pool
  (real Envoy, including while the router is down) and never come back to the client.
* Listening sockets the router opens for operators bind to loopback unless configured otherwise.
* No prompt text in logs, spans, metrics or the state file by default: requests carrying a unique
  marker go through the real stack with JSON decision logs, console-exported spans and Prometheus on,
  and the marker is searched for everywhere the router writes; at unit level the same with the SDK's
  in-memory exporters. Each search has a positive control (something that must be found there).
* The calibration state file is replaced atomically and is readable by its owner only.
* The router never answers in its own name, so it can never echo request content in an error.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import pytest

from extproc.algorithm import Calibrator
from extproc.config import ServerConfig, TelemetryConfig, load_config
from extproc.server.exchange import Exchange, RouterRuntime
from extproc.server.state_store import StateStore
from extproc.telemetry import JsonLinesFormatter
from tests.envoy_play import request_body, request_headers, response_body, response_headers
from tests.hardening import CHAT_PATH, POOL_HEADER, REASON_HEADER, ObservedStack, Reply, chat, observed_stack, send
from tests.test_telemetry import make_rig

MARKER = "qx7-marmalade-kestrel-51"  # appears in no code, config or vocabulary of the router
LONG_BODY = orjson.dumps(chat(max_tokens=9_000))  # capacity: only the long pool can take it
SHORT_BODY = orjson.dumps(chat())


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObservedStack]:
    with observed_stack(tmp_path_factory, "security") as obs:
        yield obs


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def upstream_headers(obs: ObservedStack, session: aiohttp.ClientSession, reply: Reply) -> dict[str, str]:
    received = await obs.received(session, reply.request_id)
    [(pool, [entry])] = [(p, e) for p, e in received.items() if e]
    assert obs.stack.access_log.pool(reply.request_id) == pool
    return entry["headers"]


# -- headers --------------------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize(
    ("body", "client_headers", "pool", "reason"),
    [
        (LONG_BODY, [("X-Budget-Pool", "short")], "long", "capacity"),
        (LONG_BODY, [(POOL_HEADER, "short"), (POOL_HEADER, "short")], "long", "capacity"),
        (SHORT_BODY, [(POOL_HEADER, "long"), (REASON_HEADER, "admin-override")], "short", "threshold"),
        (b"{not json", [(POOL_HEADER, "short"), (REASON_HEADER, "threshold")], "long", "unparseable"),
    ],
    ids=["upper_case", "duplicated", "with_reason", "unreadable_body"],
)
async def test_client_copies_of_our_headers_never_reach_a_pool(
    observed: ObservedStack, session: aiohttp.ClientSession, body: bytes, client_headers, pool: str, reason: str
) -> None:
    reply = await send(session, observed.url, "POST", CHAT_PATH, body, client_headers)
    headers = await upstream_headers(observed, session, reply)
    assert (headers[POOL_HEADER], headers[REASON_HEADER]) == (pool, reason)  # one value each: the router's
    assert not any(name.startswith("x-budget") for name in reply.headers)  # and nothing goes back to the client


@pytest.mark.e2e
async def test_client_pool_header_is_stripped_while_the_router_is_down(
    observed: ObservedStack, session: aiohttp.ClientSession
) -> None:
    """Fail-open must not become trust-the-client: Envoy itself removes the header before routing."""
    observed.stack.kill_router()
    try:
        reply = await send(session, observed.url, "POST", CHAT_PATH, SHORT_BODY, {POOL_HEADER: "short"})
        assert reply.status == 200
        headers = await upstream_headers(observed, session, reply)
        assert POOL_HEADER not in headers and observed.stack.access_log.pool(reply.request_id) == "long"
    finally:
        observed.stack.restart_router()
        await observed.wait_routing(session)


@pytest.mark.e2e
async def test_client_reason_header_is_stripped_while_the_router_is_down(
    observed: ObservedStack, session: aiohttp.ClientSession
) -> None:
    """The router removes a client's reason header, but while it is down (fail-open) only Envoy's early
    header mutation runs, and it removes the pool header only: the forged reason reaches the pool."""
    observed.stack.kill_router()
    try:
        reply = await send(session, observed.url, "POST", CHAT_PATH, SHORT_BODY, {REASON_HEADER: "forged"})
        headers = await upstream_headers(observed, session, reply)
    finally:
        observed.stack.restart_router()
        await observed.wait_routing(session)
    assert REASON_HEADER not in headers


@pytest.mark.e2e
async def test_client_envoy_headers_neither_reach_the_log_nor_steer_envoy(
    observed: ObservedStack, session: aiohttp.ClientSession
) -> None:
    """Before: a client's x-envoy-original-path replaced the path in Envoy's access log, and Envoy
    obeys x-envoy-upstream-rq-timeout-ms from any private address. Envoy now removes every client
    x-envoy-* header before routing."""
    forged = [("x-envoy-original-path", "/admin/forged"), ("x-envoy-upstream-rq-timeout-ms", "1"),
              ("X-Envoy-Max-Retries", "9")]  # fmt: skip
    reply = await send(session, observed.url, "POST", CHAT_PATH, SHORT_BODY, forged)
    assert reply.status == 200
    assert observed.stack.access_log.entry(reply.request_id)["path"] == CHAT_PATH
    headers = await upstream_headers(observed, session, reply)
    assert not any(name in headers for name, _ in forged)


@pytest.mark.e2e
async def test_idle_pool_connections_are_closed(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Before: pool clusters had no upstream idle timeout (1,663 idle connections kept after 2,000
    clients). Shipped: 60 s (``POOL_IDLE_TIMEOUT_S``); here 1 s, to see Envoy close them."""
    from extproc.envoy_names import SHORT_CLUSTER
    from tests.conftest import start_stack
    from tests.hardening.test_load import envoy_counter
    from tests.waiting import until

    with start_stack(tmp_path_factory, "idle", layout_overrides={"pool_idle_timeout_s": 1.0}) as stack:
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                assert (await send(client, stack.url, "POST", CHAT_PATH, SHORT_BODY)).status == 200
        stat = f"cluster.{SHORT_CLUSTER}.upstream_cx_idle_timeout"
        until(lambda: envoy_counter(stack, stat) >= 1, "Envoy closing an idle pool connection", timeout_s=15)
        until(lambda: envoy_counter(stack, f"cluster.{SHORT_CLUSTER}.upstream_cx_active") == 0, "none left open")


# -- listening sockets ---------------------------------------------------------------------------------
def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as the kernel writes them) of TCP sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.rsplit(":", 1)
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def test_operator_endpoints_default_to_loopback() -> None:
    assert TelemetryConfig().metrics_host == "127.0.0.1"
    assert ServerConfig().listen.startswith("127.0.0.1:")
    assert load_config(env={}).telemetry.metrics_host == "127.0.0.1"


@pytest.mark.e2e
def test_running_metrics_endpoint_listens_on_loopback_only(observed: ObservedStack) -> None:
    """The stack passes only the metrics port, so the bind address is the router's default."""
    assert "--telemetry-metrics-host" not in " ".join(observed.stack.routers[0].argv)
    assert listening_addresses(observed.metrics_port) == {"0100007F"}  # 127.0.0.1, no IPv6/any socket


# -- no prompt text anywhere ---------------------------------------------------------------------------
MARKED_REQUESTS = [
    (CHAT_PATH, orjson.dumps(chat(f"Please summarise {MARKER} in one line."))),
    (CHAT_PATH, orjson.dumps(chat(f"Stream about {MARKER}.", stream=True))),
    (CHAT_PATH, orjson.dumps(chat([{"type": "text", "text": MARKER}], max_tokens=9_000))),
    (CHAT_PATH, b'{"messages": [{"role": "user", "content": "' + MARKER.encode() + b'"'),  # truncated JSON
    (CHAT_PATH, orjson.dumps(chat(MARKER, max_tokens="many"))),  # shape error
    ("/v1/completions", orjson.dumps({"model": chat()["model"], "prompt": MARKER, "max_tokens": 4})),
    ("/v1/embeddings", orjson.dumps({"input": MARKER})),  # unknown endpoint
]


@pytest.mark.e2e
async def test_no_prompt_text_in_router_logs_spans_metrics_or_state(
    observed: ObservedStack, session: aiohttp.ClientSession
) -> None:
    replies = [await send(session, observed.url, "POST", path, body, {}) for path, body in MARKED_REQUESTS]
    decisions = [observed.decision(r.request_id) for r in replies]  # control: every exchange was logged
    assert {d["pool"] for d in decisions} == {"short", "long"}
    await observed.wait_idle(session)
    trace_ids = [d["trace_id"] for d in decisions if d["trace_id"]]
    assert trace_ids, "router spans are on: decision lines carry their trace ids"
    _wait_for(lambda: all(f'"trace_id": "0x{t}"' in observed.router_log for t in trace_ids), "spans exported")
    _wait_for(lambda: observed.stack.state_file.exists(), "calibration saved")
    metrics = await _metrics_text(observed, session)
    assert "budget_router_requests_total" in metrics  # control
    for where, text in {
        "router log (decision lines, console spans)": observed.router_log,
        "router metrics": metrics,
        "calibration state": observed.stack.state_file.read_text(),
        "envoy access log": observed.stack.access_log.path.read_text(),
    }.items():
        assert MARKER not in text, f"prompt text found in the {where}"


async def _metrics_text(obs: ObservedStack, session: aiohttp.ClientSession) -> str:
    async with session.get(f"http://127.0.0.1:{obs.metrics_port}/metrics") as resp:
        return await resp.text()


def _wait_for(predicate, what: str, timeout_s: float = 10.0) -> None:
    from extproc.stack.stack import wait_for

    wait_for(predicate, timeout_s, what)


def test_no_prompt_text_in_spans_metrics_or_decision_logs_at_unit_level(caplog: pytest.LogCaptureFixture) -> None:
    """The same through ``Exchange`` with the SDK's in-memory exporters and the JSON log formatter,
    including the responses that carry text back (a completion, a stream, a context-length 400)."""
    from extproc.telemetry import DecisionLog

    rig = make_rig(decisions=DecisionLog(json_lines=True))
    reply_text = orjson.dumps({"choices": [{"message": {"content": MARKER}}], "usage": {"prompt_tokens": 40}})
    sse = b'data: {"choices":[{"delta":{"content":"' + MARKER.encode() + b'"}}]}\n\ndata: [DONE]\n\n'
    overflow = orjson.dumps({"error": {"message": f"{MARKER}: maximum context length is 8192 tokens", "code": 400}})
    cases = [
        (orjson.dumps(chat(MARKER, model="control-model-name")), 200, "application/json", reply_text),
        (orjson.dumps(chat(MARKER, stream=True)), 200, "text/event-stream", sse),
        (orjson.dumps(chat(MARKER * 50)), 400, "application/json", overflow),
        (b'{"messages": "' + MARKER.encode(), 400, "application/json", overflow),
    ]
    with caplog.at_level(logging.INFO):
        for raw, status, ctype, answer in cases:
            ex = Exchange(rig.rt)
            for msg in (request_headers(), request_body(raw), response_headers(status, ctype), response_body(answer)):
                if not ex.done:
                    ex.handle(msg)
            ex.close()
    formatter = JsonLinesFormatter()
    logs = "\n".join(formatter.format(r) for r in caplog.records)
    spans = "\n".join(s.to_json() for s in rig.finished_spans())
    data = rig.reader.get_metrics_data()
    metrics = data.to_json() if data is not None else ""
    assert "control-model-name" in spans and "control-model-name" in logs  # the model is recorded by design
    assert "budget_router.requests" in metrics
    for where, text in {"logs": logs, "spans": spans, "metrics": metrics}.items():
        assert MARKER not in text, f"prompt text found in {where}"


# -- the calibration state file -----------------------------------------------------------------------
def _calibrator(samples: int = 3) -> Calibrator:
    cal = Calibrator()
    cal.load({"prose": {"mean": 4.2, "dev": 0.3, "samples": samples}})
    return cal


def test_state_file_is_owner_only_even_with_a_permissive_umask(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "calibration.json"
    old = os.umask(0)
    try:
        StateStore(str(path), replica_id="r1").sync(_calibrator())
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["calibration.json", "calibration.json.lock"]


def test_state_file_with_loose_permissions_is_replaced_by_an_owner_only_one(tmp_path: Path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text("{}")
    path.chmod(0o644)
    StateStore(str(path), replica_id="r1").sync(_calibrator())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert orjson.loads(path.read_bytes())["replicas"]["r1"]["categories"]["prose"]["samples"] == 3


def test_state_file_is_replaced_atomically_under_concurrent_readers(tmp_path: Path) -> None:
    """A reader never sees a torn file: each write is a new inode renamed over the old one."""
    path = tmp_path / "calibration.json"
    store = StateStore(str(path), replica_id="writer")
    store.sync(_calibrator())
    stop = threading.Event()
    torn: list[bytes] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            raw = path.read_bytes()
            reads += 1
            try:
                json.loads(raw)
            except ValueError:
                torn.append(raw)

    thread = threading.Thread(target=reader)
    thread.start()
    inodes = set()
    try:
        for i in range(200):
            store.sync(_calibrator(samples=i + 1))
            inodes.add(path.stat().st_ino)
    finally:
        stop.set()
        thread.join()
    assert torn == [] and reads > 0
    assert len(inodes) > 1  # written beside and renamed, not rewritten in place


def test_state_write_does_not_follow_a_symlink_planted_at_its_temp_name(tmp_path: Path) -> None:
    """The temp name is predictable (``.<name>.<pid>.tmp``) and opened without O_EXCL/O_NOFOLLOW, so
    anyone who can write the state directory can make the router overwrite a file it can write."""
    path = tmp_path / "calibration.json"
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / f".{path.name}.{os.getpid()}.tmp").symlink_to(victim)
    StateStore(str(path), replica_id="r1").sync(_calibrator())
    assert victim.read_text() == "precious"


@pytest.mark.e2e
def test_the_running_routers_state_file_is_owner_only(observed: ObservedStack) -> None:
    _wait_for(lambda: observed.stack.state_file.exists(), "calibration saved")
    assert stat.S_IMODE(observed.stack.state_file.stat().st_mode) == 0o600


# -- the router never answers for the backend ---------------------------------------------------------
UNROUTABLE = [
    ("POST", CHAT_PATH, {}, b'{"messages": [{"content": "' + MARKER.encode() + b'"'),
    ("POST", CHAT_PATH, {}, orjson.dumps({"messages": MARKER})),
    ("POST", CHAT_PATH, {}, orjson.dumps(chat(MARKER, max_tokens=-1))),
    ("POST", CHAT_PATH, {"content-encoding": "br"}, MARKER.encode() * 10),
    ("POST", "/v1/embeddings", {}, orjson.dumps({"input": MARKER})),
    ("GET", CHAT_PATH, {}, orjson.dumps(chat(MARKER))),
    ("POST", CHAT_PATH, {}, b"x" * 10 + MARKER.encode() + b" " * (17 * 1024 * 1024)),  # over the body limit
]


@pytest.mark.parametrize(("method", "path", "headers", "raw"), UNROUTABLE, ids=lambda v: str(v)[:20])
def test_router_messages_never_carry_content_it_could_not_route(method, path, headers, raw) -> None:
    """For a body it cannot read the router only says "long": no immediate response (the backend
    answers, in its own words), no body mutation, and no byte of the content in any header."""
    rt = RouterRuntime.from_config(load_config(env={}, overrides={"calibration": {"state_file": ""}}))
    ex = Exchange(rt)
    answers = [ex.handle(request_headers(path, method, headers)), ex.handle(request_body(raw))]
    assert ex.record.pool == "long" and ex.record.reason == "unparseable"
    for answer in answers:
        assert answer.WhichOneof("response") != "immediate_response"
        wire = answer.SerializeToString()
        assert MARKER.encode() not in wire and len(wire) < 1024
    ex.close()
