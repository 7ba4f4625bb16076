"""Only traffic a pool really served shapes what the router learns and saves (real Envoy, router, pools).

Before (issue 25): a model name got one of the estimator's 8 slots when a request was estimated,
before any pool accepted it; 7 bogus names (CRLF, NUL, 10 KB strings) that every pool answered 404
took every free slot, were saved (state 7.4 -> 72 KB), came back after a restart, and a real new
model then learned in the shared bucket. Now a model gets its own slot from a pool's ``usage`` only,
names that are not model names never get one, and nothing unlearned is saved.
"""

from __future__ import annotations

import aiohttp
import orjson
import pytest

from extproc.algorithm.linear_estimator import DEFAULT_MODEL
from tests.conftest import start_stack
from tests.e2e.client import MODEL, body_for, post
from tests.waiting import until

pytestmark = pytest.mark.e2e

BOGUS = ["bogus-model", "bad\r\nname", "nul\x00model", "x" * 10_000, "spa ce", "m-1", "m-2", "m-3", "m-4", "m-5"]


def chat(model: str, i: int) -> dict:
    """~5,000 tokens: near enough to B_short (8,192) that the v2 estimator, and its model slots, decide."""
    return {**body_for("prose", 5_000, max_tokens=8, seed=i), "model": model}


def saved_models(state_file) -> set[str]:
    """The models with buckets in the freshest saved linear snapshot."""
    replicas = orjson.loads(state_file.read_bytes())["replicas"]
    newest = max(replicas.values(), key=lambda e: e["updated"])
    return {key.split("\t", 1)[0] for key in newest.get("linear", {})}


async def test_bogus_model_names_take_no_slot_and_are_never_saved(tmp_path_factory: pytest.TempPathFactory) -> None:
    with start_stack(tmp_path_factory, "slots") as stack:
        async with aiohttp.ClientSession() as session:
            for round_ in range(3):
                for i, name in enumerate(BOGUS):
                    reply = await post(session, stack.url, chat(name, round_ * 100 + i))
                    assert reply.status == 404, reply.body[:200]  # every pool refuses the name
            for i in range(6):
                assert (await post(session, stack.url, chat(MODEL, i))).status == 200
        until(lambda: MODEL in saved_models(stack.state_file), "the real model saved", timeout_s=20)
        assert saved_models(stack.state_file) == {MODEL}
        assert len(stack.state_file.read_bytes()) < 64 * 1024
        stack.restart_router()
        async with aiohttp.ClientSession() as session:
            assert (await post(session, stack.url, chat(MODEL, 99))).status == 200
        first = orjson.loads(stack.state_file.read_bytes())["replicas"]
        until(
            lambda: orjson.loads(stack.state_file.read_bytes())["replicas"] != first,
            "the restarted router's first save",
            timeout_s=20,
        )
        assert saved_models(stack.state_file) == {MODEL}  # nothing came back
        assert DEFAULT_MODEL not in saved_models(stack.state_file)
