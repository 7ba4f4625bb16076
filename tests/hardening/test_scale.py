"""Scaling out: worker processes on one port, and router replicas behind Envoy.

* ``budget-router serve --server-workers N``: N processes, each its own listening socket on the same
  port (SO_REUSEPORT; the kernel spreads Envoy's connections over them), each a full router with no
  shared lock. Their calibration meets in the state file: every save interval each worker publishes
  its snapshot and blends in the others' (``extproc/server/state_store.py``), so what one worker learned
  reaches all of them within a few intervals.
* Several replicas in Envoy's router cluster (HTTP/2, gRPC health-checked, least-request): every
  replica routes the same way, and killing one loses no request (fail-open until Envoy ejects it,
  then the others route).
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import grpc
import orjson
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as epg

from extproc.gateway.envoy_config import ROUTER_CLUSTER
from extproc.stack.probes import envoy_host_healthy, free_port, grpc_serving
from extproc.stack.process import ManagedProcess
from extproc.stack.stack import EMULATOR_FRAMING, Stack, child_env, wait_for
from tests.conftest import start_stack
from tests.e2e.client import body_for, post
from tests.envoy_play import request_body, request_headers, response_body, response_headers
from tests.hardening.test_faults import LONG_PROMPT, SHORT_PROMPT, assert_all_ok, steady_load

pytestmark = pytest.mark.e2e

WORKERS = 3
SAVE_INTERVAL_S = 0.5
# Worker 0 sees code prompts whose usage says 3.0 bytes/token; the cold start is 4.0.
LEARNED_RATIO = 3.0
LEARN_EXCHANGES = 40


def listening_inodes(port: int) -> set[str]:
    """Socket inodes in LISTEN state on ``port`` (gRPC listens on IPv4-mapped IPv6 where it can)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def socket_inodes(pid: int) -> set[str]:
    out = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = fd.readlink()
        except OSError:
            continue
        if str(target).startswith("socket:["):
            out.add(str(target)[8:-1])
    return out


def router_workers(pid: int) -> list[int]:
    """The worker processes of ``budget-router serve`` (multiprocessing's resource tracker excluded)."""
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        if b"resource_tracker" not in cmdline:
            out.append(int(child))
    return out


def worker_entries(state_file: Path, port: int) -> dict[int, dict]:
    """Each worker's saved categories, by worker index (instance ids ``<hostname>:<port>/w<N>``)."""
    try:
        replicas = orjson.loads(state_file.read_bytes()).get("replicas", {})
    except (FileNotFoundError, orjson.JSONDecodeError):
        return {}
    ids = {i: f"{socket.gethostname()}:{port}/w{i}" for i in range(WORKERS)}
    return {i: replicas[rid]["categories"] for i, rid in ids.items() if rid in replicas}


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[ManagedProcess, int, Path]]:
    port, state = free_port(), tmp_path / "calibration.json"
    argv = [
        sys.executable, "-m", "extproc.cli", "serve", "--server-workers", str(WORKERS),
        "--server-listen", f"127.0.0.1:{port}", "--server-grace-period-s", "2",
        "--calibration-state-file", str(state), "--calibration-save-interval-s", str(SAVE_INTERVAL_S),
        "--telemetry-metrics-port", "0", *EMULATOR_FRAMING,
    ]  # fmt: skip
    proc = ManagedProcess("router-workers", argv, tmp_path / "router.log", child_env())
    proc.start()
    try:
        proc.wait_until(lambda: grpc_serving(f"127.0.0.1:{port}"), 60, "SERVING")
        assert proc.pid is not None
        wait_for(lambda: len(router_workers(proc.pid)) >= WORKERS, 30, f"{WORKERS} worker processes")
        # Each worker binds when its interpreter has started; the first one SERVING says nothing of the rest.
        wait_for(lambda: len(listening_inodes(port)) >= WORKERS, 30, f"{WORKERS} listening sockets")
        yield proc, port, state
    finally:
        code = proc.stop(10.0)
    assert code == 0, proc.log_tail()


async def learn_through_one_connection(port: int, n: int) -> None:
    """``n`` full exchanges (request, then a JSON response with usage) on one HTTP/2 connection,
    so one worker does all the learning."""
    body = body_for("code", 600, max_tokens=8, seed=1)
    raw = orjson.dumps(body)
    text_bytes = len(body["messages"][0]["content"].encode())
    prompt_tokens = round(text_bytes / LEARNED_RATIO) + 10  # + the framing the router is told about
    usage = orjson.dumps({"object": "chat.completion", "choices": [],
                          "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": 8}})  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = epg.ExternalProcessorStub(channel)
        for _ in range(n):
            call = stub.Process()
            for message in (request_headers(), request_body(raw), response_headers(), response_body(usage)):
                await call.write(message)
                await call.read()
            await call.done_writing()
            await call.read()


async def test_workers_share_the_port_and_converge_on_one_calibration(
    workers: tuple[ManagedProcess, int, Path],
) -> None:
    proc, port, state = workers
    assert proc.pid is not None
    pids = router_workers(proc.pid)
    assert len(pids) == WORKERS
    # N listening sockets on one port, one per worker: SO_REUSEPORT, not one socket passed around.
    listening = listening_inodes(port)
    assert len(listening) == WORKERS
    assert all(len(socket_inodes(pid) & listening) == 1 for pid in pids)

    await learn_through_one_connection(port, LEARN_EXCHANGES)
    learned_at = time.monotonic()

    def converged() -> bool:
        entries = worker_entries(state, port)
        if len(entries) < WORKERS:
            return False
        code = [e.get("code", {}) for e in entries.values()]
        means = [c.get("mean", 0.0) for c in code]
        return all(c.get("samples", 0) >= LEARN_EXCHANGES for c in code) and max(means) - min(means) < 0.01

    await asyncio.to_thread(wait_for, converged, 6 * SAVE_INTERVAL_S + 2, "all workers to share the learned ratio")
    took = time.monotonic() - learned_at
    entries = worker_entries(state, port)
    print(f"workers converged {took:.2f}s after learning: {[e['code'] for e in entries.values()]}")
    for categories in entries.values():
        assert abs(categories["code"]["mean"] - LEARNED_RATIO) < 0.1  # the learned value, not a blend with 4.0
    assert took < 4 * SAVE_INTERVAL_S + 1.0


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    flags = ("--telemetry-log-decisions", "true")
    with start_stack(tmp_path_factory, "replicas", router_replicas=3, router_flags=flags, latency_scale=0.3) as stack:
        yield stack


async def test_every_replica_routes_correctly(replicas: Stack) -> None:
    stack = replicas
    async with aiohttp.ClientSession() as session:
        for i in range(45):
            long = i % 3 == 0
            reply = await post(session, stack.url, body_for("prose", LONG_PROMPT if long else SHORT_PROMPT,
                                                            max_tokens=8, seed=i))  # fmt: skip
            assert reply.status == 200
            assert stack.access_log.pool(reply.request_id) == ("long" if long else "short")
    # Least-request balancing spread the 45 exchanges: each replica decided some.
    counts = [stack.routers[i].log_path.read_text(errors="replace").count("budget_router.decisions") for i in range(3)]
    assert all(c > 0 for c in counts), counts


@pytest.mark.slow
async def test_killing_one_replica_loses_nothing_and_the_others_keep_routing(replicas: Stack) -> None:
    stack = replicas
    load = asyncio.create_task(steady_load(stack, duration_s=3.0, concurrency=12))
    await asyncio.sleep(1.0)
    await asyncio.to_thread(stack.kill_router, 1)
    results = await load
    assert_all_ok(results)
    for expected, reply in results:
        if expected == "long":
            assert stack.access_log.pool(reply.request_id) == "long"
    dead = stack.router_ports[1]
    await asyncio.to_thread(
        wait_for, lambda: not envoy_host_healthy(stack.admin_url, ROUTER_CLUSTER, "127.0.0.1", dead), 5.0,
        "Envoy to eject the dead replica",
    )  # fmt: skip
    async with aiohttp.ClientSession() as session:
        for i in range(10):
            reply = await post(session, stack.url, body_for("prose", SHORT_PROMPT, max_tokens=8, seed=500 + i))
            assert reply.status == 200
            assert stack.access_log.pool(reply.request_id) == "short"  # routed by a live replica
