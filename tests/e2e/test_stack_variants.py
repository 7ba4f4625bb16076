"""The stack's other shapes: several router replicas behind one Envoy, and fail-closed."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import pytest

from extproc.stack.stack import Stack
from tests.conftest import start_stack
from tests.e2e.client import body_for, post

pytestmark = pytest.mark.e2e


async def _burst(stack: Stack, n: int, tokens: int) -> list:
    async with aiohttp.ClientSession() as session:
        return await asyncio.gather(
            *(post(session, stack.url, body_for("prose", tokens, max_tokens=4, seed=i)) for i in range(n))
        )


async def test_two_router_replicas_share_traffic_and_calibration(tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_stack(tmp_path_factory, "replicas", router_replicas=2) as stack:
        replies = await _burst(stack, 24, 300)
        assert [r.status for r in replies] == [200] * 24
        assert {stack.access_log.pool(r.request_id) for r in replies} == {"short"}
        deadline = time.monotonic() + 10
        while True:  # each replica saves its own snapshot into the one state file
            replicas = orjson.loads(stack.state_file.read_bytes())["replicas"] if stack.state_file.exists() else {}
            learned = [e for e in replicas.values() if e["categories"].get("prose", {}).get("samples", 0) > 0]
            if len(learned) == 2:
                break
            assert time.monotonic() < deadline, f"replica snapshots: {replicas}"
            await asyncio.sleep(0.2)


async def test_fail_closed_answers_503_without_the_router(tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_stack(tmp_path_factory, "closed", fail_open=False) as stack:
        assert [r.status for r in await _burst(stack, 3, 200)] == [200] * 3
        stack.kill_router()
        started = time.monotonic()
        replies = await _burst(stack, 3, 200)
        assert [r.status for r in replies] == [503] * 3
        assert time.monotonic() - started < 5.0
