"""Through the real Envoy, with emulated pools of the right sizes: the exact count the net brings back
for a misplaced request is learned, not thrown away as an outlier, and the same prompt goes straight
to the long pool the next time.

The router knows the real short context (2,048). After some ordinary prose it meets gibberish
(random lowercase "words": ~1.9 bytes per cl100k token, where prose packs ~4.3), which no
character-class fit of prose can size: estimated at ~half its size, it is routed short, the short
pool answers vLLM's context-length 400, and Envoy's net resends it to the long pool.
"""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from extproc.stack.router_view import read_decisions
from extproc.stack.stack import PoolSpec, Stack, wait_for
from tests.conftest import start_stack
from tests.e2e.client import MODEL, body_for, post

pytestmark = pytest.mark.e2e

SHORT_CONTEXT = 2048
FLAGS = (
    "--routing-short-context", str(SHORT_CONTEXT), "--routing-b-short", str(SHORT_CONTEXT),
    "--telemetry-json-logs", "true", "--telemetry-log-decisions", "true",
)  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with start_stack(
        tmp_path_factory,
        "learn-retries",
        short=PoolSpec("short", SHORT_CONTEXT, 16),
        router_flags=FLAGS,
        layout_overrides={"short_net": "priority_group"},
    ) as running:
        yield running


def _decisions(stack: Stack, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    logs = [p.log_path for p in stack.routers]
    wait_for(lambda: set(request_ids) <= set(read_decisions(logs)), 10.0, "the router's decision lines")
    return read_decisions(logs)


def _gibberish(nbytes: int, seed: int) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < nbytes:
        words.append("".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(8, 20))))
    return " ".join(words)


async def test_the_nets_exact_count_is_learned_and_the_prompt_goes_long_next_time(stack: Stack) -> None:
    async with aiohttp.ClientSession() as session:
        for i in range(14):  # ordinary prose: the category warms up past its outlier gate (10 samples)
            reply = await post(session, stack.url, body_for("prose", 200 + 90 * i, max_tokens=8, seed=i))
            assert reply.status == 200, reply.body
        body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": _gibberish(4500, 1)}]}
        first = await post(session, stack.url, body)
        again = await post(session, stack.url, body)
        prose = await post(session, stack.url, body_for("prose", 1_000, max_tokens=8, seed=99))
    assert (first.status, again.status, prose.status) == (200, 200, 200)  # no client sees the 400
    seen = _decisions(stack, [first.request_id, again.request_id, prose.request_id])
    miss, resent, ordinary = seen[first.request_id], seen[again.request_id], seen[prose.request_id]
    assert (miss["pool"], miss["attempts"], miss["served_pool"]) == ("short", 2, "long"), miss
    assert miss["prompt_tokens"] > SHORT_CONTEXT and miss["estimated_prompt_tokens"] < SHORT_CONTEXT / 1.5
    assert miss["observation"] == "accepted", miss  # the engine's count: never an outlier
    assert (resent["pool"], resent["attempts"]) == ("long", 1), resent  # remembered for this prompt
    assert resent["estimated_prompt_tokens"] >= miss["prompt_tokens"]
    assert ordinary["pool"] == "short", ordinary  # prose of that size is not sent long by it
