"""A router bug through the real Envoy: the stream ends with a gRPC error and Envoy's failure mode
decides. Fail-open serves the request unrouted (the long pool); fail-closed answers 5xx."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import orjson
import pytest

from extproc.config import load_config
from extproc.server.events import ExchangeObserver, ExchangeRecord
from extproc.server.exchange import RouterRuntime
from extproc.server.service import RouterServer
from tests.test_envoy_config import Pool, _free_port, _layout, _post, pools, running_envoy, wait_ready  # noqa: F401

pytestmark = pytest.mark.e2e


class BuggyObserver(ExchangeObserver):
    """A bug on the request-body path of the real exchange code (raised out of a hook)."""

    def decided(self, record: ExchangeRecord) -> None:
        raise RuntimeError("router bug")


CHAT = orjson.dumps({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi " * 20}]})


@pytest.mark.parametrize("fail_open", [True, False])
async def test_a_router_bug_follows_envoys_failure_mode(
    pools: tuple[Pool, Pool],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    fail_open: bool,
) -> None:
    router_port = _free_port()
    layout = _layout(*pools, router_port=router_port, failure_mode_allow=fail_open)
    overrides = {"server": {"listen": f"127.0.0.1:{router_port}"}, "calibration": {"state_file": ""}}
    rt = RouterRuntime.from_config(load_config(env={}, overrides=overrides), BuggyObserver())
    server = RouterServer(rt)
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            with running_envoy(layout, tmp_path) as proc:
                await wait_ready(session, layout, proc)
                status, body = await _post(session, layout, body=CHAT)
    finally:
        await server.stop(1.0)
    if fail_open:
        assert (status, body["pool"]) == (200, "long")
    else:
        assert status >= 500
