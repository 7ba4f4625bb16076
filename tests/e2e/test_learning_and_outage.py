"""Learning from real responses, then losing the router and getting it back, on one stack started cold.

The module fixture first teaches the router ~50 requests per category through Envoy; the outage test
kills it mid-load; the restart test brings it back (killing it first if it runs alone, so no test
depends on another having run) and checks that it resumes from the calibration the killed process
had saved.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import numpy as np
import orjson
import pytest

from extproc.stack.stack import Stack
from tests.conftest import start_stack
from tests.e2e.client import body_for, calibration, post, wait_samples
from tests.waiting import until_async

pytestmark = pytest.mark.e2e

CATEGORIES = ("prose", "code", "cjk")
PER_CATEGORY = 50
TOLERANCE = 0.035


@dataclass
class Taught:
    stack: Stack
    true_ratio: dict[str, float]  # emulator's bytes per content token over the requests sent


async def _teach(stack: Stack) -> dict[str, float]:
    rng = np.random.default_rng(3)
    jobs = [(c, int(rng.integers(300, 2_500)), bool(i % 2)) for i in range(PER_CATEGORY) for c in CATEGORIES]
    nbytes = dict.fromkeys(CATEGORIES, 0)
    ntokens = dict.fromkeys(CATEGORIES, 0)
    gate = asyncio.Semaphore(6)

    async def one(session: aiohttp.ClientSession, i: int, category: str, tokens: int, stream: bool) -> None:
        body = body_for(category, tokens, max_tokens=4, seed=1_000 + i, stream=stream)
        nbytes[category] += len(body["messages"][-1]["content"].encode())
        ntokens[category] += tokens  # the prompt builder cuts text to exactly this many BPE tokens
        async with gate:
            reply = await post(session, stack.url, body)
        assert reply.status == 200, reply.body

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i, *job) for i, job in enumerate(jobs)))
    return {c: nbytes[c] / ntokens[c] for c in CATEGORIES}


@pytest.fixture(scope="module")
def taught(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Taught]:
    with start_stack(tmp_path_factory, "learning") as stack:
        true_ratio = asyncio.run(_teach(stack))
        for category in CATEGORIES:
            # The router detects categories from the text and rejects outliers: a window of C code
            # may read as prose, so allow a few samples to land elsewhere.
            wait_samples(stack, category, PER_CATEGORY - 5)
        yield Taught(stack, true_ratio)


def test_learned_ratios_converge_to_the_true_bytes_per_token(taught: Taught) -> None:
    state = calibration(taught.stack)
    for category in CATEGORIES:
        learned, true = state[category]["mean"], taught.true_ratio[category]
        assert abs(learned - true) / true <= TOLERANCE, f"{category}: learned {learned:.3f}, true {true:.3f}"
    # The categories really differ (CJK packs fewer bytes per token), so per-category learning matters.
    assert taught.true_ratio["cjk"] < 0.8 * taught.true_ratio["prose"]


async def test_router_killed_mid_load_every_request_still_succeeds_long(taught: Taught) -> None:
    stack = taught.stack
    killed_at: list[float] = []
    results: list[tuple[float, str, int]] = []
    gate = asyncio.Semaphore(6)

    async def one(session: aiohttp.ClientSession, i: int) -> None:
        async with gate:
            sent = time.monotonic()
            reply = await post(session, stack.url, body_for("prose", 400, max_tokens=4, seed=5_000 + i))
        results.append((sent, reply.request_id, reply.status))
        if len(results) == 20:
            await asyncio.to_thread(stack.kill_router)
            killed_at.append(time.monotonic())

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session, i) for i in range(80)))
    assert killed_at and not stack.routers[0].alive
    assert [status for _, _, status in results] == [200] * 80
    after = [rid for sent, rid, _ in results if sent > killed_at[0]]
    assert len(after) >= 40
    assert {stack.access_log.pool(rid) for rid in after} == {"long"}  # Envoy's default route, fail-open


async def test_restarted_router_resumes_from_saved_calibration(taught: Taught) -> None:
    stack = taught.stack
    if stack.routers[0].alive:  # run alone (or after a failed outage test): end the router here
        stack.kill_router()
    rid = f"{socket.gethostname()}:{stack.router_ports[0]}"  # the same instance id after the restart
    before = orjson.loads(stack.state_file.read_bytes())["replicas"][rid]
    saved = before["categories"]
    assert all(saved[c]["samples"] >= PER_CATEGORY - 5 for c in CATEGORIES)

    stack.restart_router()
    assert "state peers loaded: 1" in stack.routers[0].log_tail(3)
    replicas = await until_async(
        lambda: orjson.loads(stack.state_file.read_bytes())["replicas"],
        "the restarted router's first save",
        ok=lambda seen: seen[rid]["updated"] > before["updated"],
    )
    resumed = replicas[rid]["categories"]
    for category in CATEGORIES:
        assert resumed[category]["samples"] == saved[category]["samples"]
        assert resumed[category]["mean"] == pytest.approx(saved[category]["mean"], rel=1e-9)

    async with aiohttp.ClientSession() as session:
        reply = await post(session, stack.url, body_for("prose", 400, max_tokens=4, seed=9_999))
    assert reply.status == 200
    assert stack.access_log.pool(reply.request_id) == "short"
