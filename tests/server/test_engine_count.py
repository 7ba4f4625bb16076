"""Engine counts against real HTTP servers on 127.0.0.1: an engine that counts, one that hangs, one
without /tokenize; the bounded number in flight; and the exchange routing with the count it is handed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aiohttp import web

from extproc.config import load_config
from extproc.server.engine_count import (
    BUSY,
    COUNTED,
    ERROR,
    TIMEOUT,
    UNAVAILABLE,
    CountResult,
    EngineCounter,
    parse_count,
    tokenize_payload,
)
from extproc.server.exchange import Exchange, RouterRuntime
from tests.envoy_play import request_body, request_headers, set_headers

# Long enough that an answering engine on a loaded 2-core machine is never late, short enough that the
# hung-engine tests stay quick; the assertions on waits allow for a loop that runs timers late.
DEADLINE_S = 0.25


class Engine:
    """A /tokenize that answers ``count`` (or hangs while ``hang`` is set), and what it was asked."""

    def __init__(self, count: int = 1234) -> None:
        self.count = count
        self.hang = asyncio.Event()
        self.bodies: list[dict[str, object]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _tokenize(self, request: web.Request) -> web.Response:
        self.bodies.append(orjson.loads(await request.read()))
        if self.hang.is_set():
            await asyncio.Event().wait()  # a stopped engine: accepted, never answered
        return web.json_response({"count": self.count, "max_model_len": 2048, "tokens": [1] * 3})

    async def start(self, with_tokenize: bool = True) -> None:
        app = web.Application()
        if with_tokenize:
            app.router.add_post("/tokenize", self._tokenize)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def engine() -> AsyncIterator[Engine]:
    e = Engine()
    await e.start()
    yield e
    await e.stop()


@pytest.fixture
async def counter(engine: Engine) -> AsyncIterator[EngineCounter]:
    c = EngineCounter(lambda pool: [engine.url] if pool == "short" else [], DEADLINE_S, max_in_flight=2)
    await c.start()
    yield c
    await c.stop()


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


async def test_the_engine_counts_the_chat_as_it_will_render_it(engine: Engine, counter: EngineCounter) -> None:
    from extproc.algorithm import Categorizer, shape_from_body

    body = {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}], "temperature": 0.2}
    payload = tokenize_payload(shape_from_body("chat", body, Categorizer()), body)
    assert payload is not None
    result = await counter.count("short", payload)
    assert (result.count, result.outcome) == (1234, COUNTED)
    assert engine.bodies == [{"model": "m", "messages": CHAT["messages"], "add_generation_prompt": True,
                              "tools": body["tools"]}]  # fmt: skip


def test_completions_send_the_longest_prompt_and_responses_have_no_tokenize_form() -> None:
    from extproc.algorithm import Categorizer, shape_from_body

    c = Categorizer()
    body = {"model": "m", "prompt": ["short", "the longest one"]}
    assert orjson.loads(tokenize_payload(shape_from_body("completions", body, c), body) or b"") == {
        "model": "m", "prompt": "the longest one"}  # fmt: skip
    responses = {"model": "m", "input": "hi"}
    assert tokenize_payload(shape_from_body("responses", responses, c), responses) is None


@pytest.mark.parametrize(
    ("answer", "count"),
    [(b'{"count": 7}', 7), (b'{"count": -1}', None), (b'{"count": "7"}', None), (b"[]", None), (b"x", None)],
)
def test_only_a_count_is_a_count(answer: bytes, count: int | None) -> None:
    assert parse_count(answer) == count


async def test_a_hung_engine_costs_two_deadlines_then_is_skipped(engine: Engine, counter: EngineCounter) -> None:
    engine.hang.set()
    loop = asyncio.get_running_loop()
    for _ in range(2):
        began = loop.time()
        result = await counter.count("short", b"{}")
        waited = loop.time() - began
        assert (result.count, result.outcome) == (None, TIMEOUT)
        assert DEADLINE_S <= waited < 2 * DEADLINE_S  # the deadline, not the engine, ends the wait
    third = await counter.count("short", b"{}")  # cooling down: not asked, not waited for
    assert third.outcome == UNAVAILABLE and third.seconds < DEADLINE_S / 5
    assert counter.outcomes[TIMEOUT] == 2 and counter.outcomes[UNAVAILABLE] == 1


async def test_one_slow_answer_does_not_stop_the_counts(engine: Engine, counter: EngineCounter) -> None:
    engine.hang.set()
    assert (await counter.count("short", b"{}")).outcome == TIMEOUT
    engine.hang.clear()
    assert [(await counter.count("short", b"{}")).outcome for _ in range(3)] == [COUNTED] * 3


async def test_counts_in_flight_are_bounded(engine: Engine, counter: EngineCounter) -> None:
    engine.hang.set()
    results = await asyncio.gather(*(counter.count("short", b"{}") for _ in range(3)))
    assert sorted(r.outcome for r in results) == [BUSY, TIMEOUT, TIMEOUT]


async def test_an_engine_without_tokenize_and_a_pool_without_engines_fall_back() -> None:
    bare = Engine()
    await bare.start(with_tokenize=False)
    c = EngineCounter(lambda pool: [bare.url] if pool == "short" else [], DEADLINE_S, 4)
    await c.start()
    try:
        assert (await c.count("short", b"{}")).outcome == ERROR  # 404: routed by the estimate
        assert (await c.count("long", b"{}")).outcome == UNAVAILABLE
    finally:
        await c.stop()
        await bare.stop()


# ---- the exchange: the count is wanted for band requests only, and routes them -----------------------
def counting_runtime() -> RouterRuntime:
    overrides = {
        "calibration": {"state_file": ""},
        "routing": {"b_short": 2048, "short_context": 2048},
        "live_load": {"short_endpoints": ["127.0.0.1:9"]},
        "estimator": {"engine_counts": True},
    }
    rt = RouterRuntime.from_config(load_config(env={}, overrides=overrides))
    rt.counter = EngineCounter(lambda _pool: [], DEADLINE_S, 4)  # never asked here: counted() gets the answer
    return rt


def band_request(rt: RouterRuntime) -> bytes:
    """A prose chat whose estimate's band holds B_short (searched, so the test follows the estimator)."""
    for words in range(250, 420, 5):
        body = {"model": "m", "messages": [{"role": "user", "content": "word " * words}], "max_tokens": 1700}
        est = rt.router.estimate_request(rt.router.shape("chat", body), exact=False)
        if est.in_band:
            return orjson.dumps(body)
    raise AssertionError("no band request found")


@pytest.mark.parametrize(("count", "pool"), [(300, "short"), (400, "long")])
def test_a_band_request_waits_for_the_count_and_is_routed_by_it(count: int, pool: str) -> None:
    rt = counting_runtime()
    ex = Exchange(rt)
    ex.handle(request_headers())
    assert ex.handle(request_body(band_request(rt))) is None  # the answer waits for the count
    assert ex.count_wanted is not None and orjson.loads(ex.count_wanted.payload)["add_generation_prompt"]
    resp = ex.counted(CountResult(count, COUNTED, 0.002))
    assert set_headers(resp.request_body.response.header_mutation)["x-budget-pool"] == pool  # 1700 + count
    assert (ex.record.engine_count, ex.record.estimated_prompt_tokens) == (COUNTED, count)


def test_without_a_count_the_band_request_is_routed_by_its_estimate() -> None:
    rt = counting_runtime()
    ex = Exchange(rt)
    ex.handle(request_headers())
    assert ex.handle(request_body(band_request(rt))) is None
    resp = ex.counted(CountResult(None, TIMEOUT, DEADLINE_S))
    assert set_headers(resp.request_body.response.header_mutation)["x-budget-pool"] in ("short", "long")
    assert ex.record.engine_count == TIMEOUT and ex.ticket is not None and ex.ticket.estimate is not None
    assert ex.ticket.estimate.engine_counted is None


def test_requests_far_from_the_threshold_never_wait() -> None:
    rt = counting_runtime()
    ex = Exchange(rt)
    ex.handle(request_headers())
    small = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
    assert ex.handle(request_body(small)) is not None and ex.count_wanted is None
    assert ex.record.engine_count == ""
