"""Hardening tests (issue 7): bad input, fuzzing, security.

The shared part lives here: a stack whose router makes every decision visible from outside, and the
readers for the three places it shows up. A routing decision is checked where an operator would
look, never inside the router process:

* upstream: the router adds its reason in ``x-budget-reason`` (``--routing-reason-header``), and the
  emulators' ``GET /admin/requests`` shows which pool received the request with which headers;
* decision log: ``--telemetry-json-logs --telemetry-log-decisions`` write one JSON line per exchange
  (pool, reason, detail, request id) to the router's log file;
* metrics: the router's Prometheus endpoint counts decisions by pool/reason and unreadable bodies
  by detail, and reports requests in flight per pool.

Traces go to the router's log too (``OTEL_TRACES_EXPORTER=console``), so a test that greps that log
also greps every span the router exported.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from extproc.emulator.engine_args import EmulatorConfig
from extproc.stack.probes import free_port
from extproc.stack.stack import Stack
from tests.conftest import start_stack
from tests.e2e.client import Reply

REASON_HEADER = "x-budget-reason"
POOL_HEADER = "x-budget-pool"
MODEL = EmulatorConfig().model
CHAT_PATH = "/v1/chat/completions"
Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def chat(content: Any = "Say hello in five words.", **fields: Any) -> dict[str, Any]:
    """A small, valid chat request for the emulators (fields override or add top-level keys)."""
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 8, **fields}


_ids = itertools.count(1)


async def send(
    session: aiohttp.ClientSession,
    base_url: str,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] = (),
    timeout_s: float = 20.0,
) -> Reply:
    """One request with its own ``x-request-id`` (Envoy keeps it: access log, emulators and the router's
    decision line all name it). ``headers`` may repeat a name."""
    request_id = f"hardening-{os.getpid()}-{next(_ids)}"
    hdrs = CIMultiDict({"content-type": "application/json", "x-request-id": request_id})
    hdrs.extend(headers)
    async with session.request(
        method, base_url + path, data=body, headers=hdrs, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as resp:
        raw = await resp.read()
        return Reply(request_id, resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw)


@dataclass
class ObservedStack:
    """A running stack plus the router's three outside views (upstream, decision log, metrics)."""

    stack: Stack
    metrics_port: int

    @property
    def url(self) -> str:
        return self.stack.url

    @property
    def router_log(self) -> str:
        return self.stack.routers[0].log_path.read_text(errors="replace")

    def decision(self, request_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
        """The router's JSON decision line for one request (written when its exchange ends)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.router_log.splitlines():
                if request_id not in line:
                    continue
                try:
                    entry = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("event") == "exchange":
                    return entry
            if time.monotonic() > deadline:
                raise AssertionError(f"no decision line for {request_id} in the router log after {timeout_s}s")
            time.sleep(0.05)

    async def wait_routing(self, session: aiohttp.ClientSession, timeout_s: float = 15.0) -> None:
        """Until a request is decided by the router again (after a restart Envoy may fail open on its
        first streams to the new process even though its health check already passed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            probe = await send(session, self.url, "POST", CHAT_PATH, orjson.dumps(chat()))
            try:
                self.decision(probe.request_id, timeout_s=0.5)
                return
            except AssertionError:
                if time.monotonic() > deadline:
                    raise

    async def received(self, session: aiohttp.ClientSession, request_id: str) -> dict[str, list[dict[str, Any]]]:
        """Every request each pool received with this ``x-request-id`` (from the emulators' admin API)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for pool in ("short", "long"):
            async with session.get(self.stack.pool_url(pool) + "/admin/requests?limit=256") as resp:
                entries = (await resp.json())["requests"]
            out[pool] = [e for e in entries if e["headers"].get("x-request-id") == request_id]
        return out

    async def metrics(self, session: aiohttp.ClientSession) -> Samples:
        """Every sample of the router's Prometheus endpoint, keyed by (name, sorted labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            text = await resp.text()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    async def in_flight(self, session: aiohttp.ClientSession) -> dict[str, float]:
        samples = await self.metrics(session)
        return {dict(labels)["pool"]: v for (name, labels), v in samples.items() if name == "budget_router_in_flight"}

    async def wait_idle(self, session: aiohttp.ClientSession, timeout_s: float = 5.0) -> None:
        """Until the router counts nothing in flight: every exchange it followed has ended."""
        deadline = time.monotonic() + timeout_s
        while True:
            now = await self.in_flight(session)
            if all(v == 0 for v in now.values()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"router still counts requests in flight after {timeout_s}s: {now}")
            await asyncio.sleep(0.05)


def increase(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one Prometheus series grew between two scrapes (absent counts as 0)."""
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


@contextlib.contextmanager
def observed_stack(tmp_path_factory: pytest.TempPathFactory, name: str, **options: Any) -> Iterator[ObservedStack]:
    """A stack (conftest's ``start_stack``) whose router reports every decision outside itself."""
    port = free_port()
    flags = (
        "--routing-reason-header", REASON_HEADER,
        "--telemetry-metrics-port", str(port),
        "--telemetry-json-logs", "true",
        "--telemetry-log-decisions", "true",
        *options.pop("router_flags", ()),
    )  # fmt: skip
    with contextlib.ExitStack() as running:
        with pytest.MonkeyPatch.context() as env:  # children copy the environment at spawn time only
            env.setenv("OTEL_TRACES_EXPORTER", "console")
            env.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
            stack = running.enter_context(start_stack(tmp_path_factory, name, router_flags=flags, **options))
        yield ObservedStack(stack, port)
