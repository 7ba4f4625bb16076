"""``budget-router up`` survives its own router: SIGKILL mid-load costs no request, and the restarted
router decides from the calibration the killed one had saved.

Everything is real and started the way a user starts it (``budget-router up`` as a child process):
Envoy, the router, two emulated pools. The test teaches the router, opens 100 streaming requests,
SIGKILLs the router while all of them are mid-stream, sends 60 more while the supervisor is still
restarting it, and then reads the restarted router's first decision from its own log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from extproc.algorithm import Calibrator
from extproc.server.state_store import StateStore
from extproc.stack.access_log import AccessLog
from extproc.stack.probes import http_get
from tests.e2e.client import CHAT_PATH, body_for, post, sse_payloads
from tests.e2e.console import running_up
from tests.e2e.test_up_cli import _assert_clean

pytestmark = pytest.mark.e2e

IN_FLIGHT = 100
DURING_RESTART = 60
STREAM_TOKENS = 300  # long enough (at latency scale 1) that every stream outlives the kill
CATEGORY = "prose"


def _pid_of(fragment: str) -> int:
    """The process whose command line contains ``fragment`` (found as an operator would)."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fragment in cmdline:
            return int(pid)
    raise AssertionError(f"no process with {fragment!r} in its command line")


def _decisions_since_last_start(log: Path) -> list[dict]:
    """The decision lines the newest process wrote (each start appends a ``$ argv`` line first)."""
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("$ ")]
    out = []
    for line in lines[starts[-1] + 1 :]:
        if line.startswith("{"):
            entry = orjson.loads(line)
            if entry.get("event") == "exchange":
                out.append(entry)
    return out


def _stream_complete(raw: bytes) -> bool:
    payloads = sse_payloads(raw)
    finished = any(
        choice.get("finish_reason") for p in payloads if p != b"[DONE]" for choice in orjson.loads(p).get("choices", [])
    )
    return bool(payloads) and payloads[-1] == b"[DONE]" and finished


async def _stream(
    session: aiohttp.ClientSession, url: str, seed: int, max_tokens: int, first_bytes: asyncio.Queue[None]
) -> tuple[int, bool, dict[str, str]]:
    """One streaming request: signals its first body bytes, then reads to the end."""
    body = orjson.dumps(body_for(CATEGORY, 300, max_tokens=max_tokens, seed=seed, stream=True))
    headers = {"content-type": "application/json", "x-request-id": f"sup-{seed}"}
    async with session.post(url + CHAT_PATH, data=body, headers=headers) as resp:
        first = await resp.content.readany()
        first_bytes.put_nowait(None)
        rest = await resp.content.read()
        return resp.status, _stream_complete(first + rest), {k.lower(): v for k, v in resp.headers.items()}


async def _load_through_kill(url: str, router_port: int, state_file: Path) -> dict:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        # Teach the router, so that "resumes from the saved calibration" is more than the prior.
        gate = asyncio.Semaphore(8)

        async def teach(i: int) -> None:
            async with gate:
                reply = await post(session, url, body_for(CATEGORY, 200 + 37 * i, max_tokens=2, seed=100 + i))
            assert reply.status == 200, reply.body

        await asyncio.gather(*(teach(i) for i in range(30)))

        first_bytes: asyncio.Queue[None] = asyncio.Queue()
        in_flight = [
            asyncio.create_task(_stream(session, url, 1_000 + i, STREAM_TOKENS, first_bytes)) for i in range(IN_FLIGHT)
        ]
        for _ in range(IN_FLIGHT):
            await asyncio.wait_for(first_bytes.get(), 60)
        assert not any(t.done() for t in in_flight), "a stream ended before the kill: raise STREAM_TOKENS"
        pid = _pid_of(f" serve --server-listen 127.0.0.1:{router_port} ")
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        saved = Calibrator()
        # What the killed router left behind, read the way a starting router reads it.
        assert StateStore(str(state_file), replica_id="e2e-reader").load_into(saved) == 1
        later = [
            asyncio.create_task(_stream(session, url, 5_000 + i, 16, asyncio.Queue())) for i in range(DURING_RESTART)
        ]
        sent_by = time.monotonic()
        results = await asyncio.gather(*in_flight, *later, return_exceptions=True)
    return {
        "saved": saved,
        "killed_pid": pid,
        "killed_at": killed_at,
        "sent_by": sent_by,
        "in_flight": results[:IN_FLIGHT],
        "later": results[IN_FLIGHT:],
    }


def _ok(result: object) -> bool:
    return isinstance(result, tuple) and result[0] == 200 and result[1]


def test_router_sigkill_under_up_loses_no_request_and_resumes_calibration(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with running_up("--latency-scale", "1", "--run-dir", str(run_dir), "--served-pool-header") as (console, url):
        _, m = console.wait_for(r"router-0 \(ext_proc\):\s+127\.0\.0\.1:(\d+)\s+metrics (http://\S+)", 5)
        router_port, metrics_url = int(m.group(1)), m.group(2)

        run = asyncio.run(_load_through_kill(url, router_port, run_dir / "calibration.json"))
        saved = run["saved"]
        restarted_at, m = console.wait_for(r"router-0 serving again, ([\d.]+) s after it went down", 30)
        console.wait_for(rf"router-0 \(pid {run['killed_pid']}\) was killed by SIGKILL; restarting in", 1)

        failed = [r for r in run["in_flight"] + run["later"] if not _ok(r)]
        assert failed == [], failed[:3]
        # The 60 went out while the router was down, and Envoy sent each to the long pool (fail-open).
        assert run["sent_by"] < restarted_at
        assert {r[2].get("x-budget-pool-served") for r in run["later"]} == {"long"}
        log = AccessLog(run_dir / "envoy-access.log")
        for i in range(DURING_RESTART):
            entry = log.entry(f"sup-{5_000 + i}")
            assert (entry["pool"], entry["routed"]) == ("long", None)  # no routing header: the default route
        assert {log.pool(f"sup-{1_000 + i}") for i in range(IN_FLIGHT)} == {"short"}

        # The restarted router's first decision uses the ratio the killed one had saved.
        router_log = run_dir / "router-0.log"
        deadline = time.monotonic() + 20
        while not _decisions_since_last_start(router_log):
            assert time.monotonic() < deadline, "the restarted router made no decision"
            asyncio.run(_one_prose(url))
        first = _decisions_since_last_start(router_log)[0]
        assert first["category"] == CATEGORY
        assert first["ratio"] == pytest.approx(saved.ratio(CATEGORY), rel=1e-9)
        assert saved.ratio(CATEGORY) != pytest.approx(Calibrator().ratio(CATEGORY), rel=1e-3)

        status, body = http_get(metrics_url)  # the restarted router serves metrics on the same port
        assert status == 200 and b"budget_router" in body
        print(
            f"\nsent {IN_FLIGHT + DURING_RESTART}, failed {len(failed)}, router back "
            f"{restarted_at - run['killed_at']:.2f} s after SIGKILL (up says {m.group(1)} s)"
        )

        # A pool that dies is reported and restarted the same way; meanwhile short requests fail over.
        _, m = console.wait_for(r"short pool \(direct\):\s+http://127\.0\.0\.1:(\d+)", 1)
        os.kill(_pid_of(f" emulate --host 127.0.0.1 --port {m.group(1)} "), signal.SIGKILL)
        console.wait_for(r"pool-short \(pid \d+\) was killed by SIGKILL; restarting in .*long pool meanwhile", 10)
        console.wait_for(r"pool-short serving again", 30)
        asyncio.run(_one_prose(url))
    _assert_clean(run_dir)


async def _one_prose(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        reply = await post(session, url, body_for(CATEGORY, 400, max_tokens=2, seed=9_000))
    assert reply.status == 200
