"""Only traffic a pool really served shapes what the router learns and saves (real Envoy, router, pools).

Before (issue 25): a model name got one of the estimator's 8 slots when a request was estimated,
before any pool accepted it; 7 bogus names (CRLF, NUL, 10 KB strings) that every pool answered 404
took every free slot, were saved (state 7.4 -> 72 KB), came back after a restart, and a real new
model then learned in the shared bucket. Now a model gets its own slot from a pool's ``usage`` only,
names that are not model names never get one, and nothing unlearned is saved. And a router whose
state directory is read-only uses the file it finds there and says once that saves are off.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from extproc.algorithm import CalibrationParams, Calibrator
from extproc.algorithm.linear_estimator import DEFAULT_MODEL
from extproc.server.state_store import StateStore
from extproc.stack.probes import free_port, grpc_serving
from extproc.stack.process import ManagedProcess
from extproc.stack.stack import child_env
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


def can_mount_read_only(tmp: Path) -> bool:
    probe = subprocess.run(
        ["unshare", "-m", "sh", "-c", f"mount --bind {tmp} {tmp} && mount -o remount,ro,bind {tmp}"],
        capture_output=True, timeout=10, check=False,
    )  # fmt: skip
    return probe.returncode == 0


def test_a_router_on_a_read_only_state_directory_loads_it_and_says_saves_are_off_once(tmp_path: Path) -> None:
    """Before: the lock file could not be created, so a valid file was ignored ("starting cold") and
    every save logged a traceback. The directory is made read-only by a bind mount in a private mount
    namespace (``unshare -m``, root): the router process sees a read-only file system, nothing else does."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if shutil.which("unshare") is None or not can_mount_read_only(state_dir):
        pytest.skip("needs unshare -m and bind mounts (root in a mount namespace) for a read-only directory")
    state = state_dir / "calibration.json"
    saved = Calibrator(CalibrationParams(), [])
    saved.load({"prose": {"mean": 4.4, "dev": 0.2, "samples": 30}})
    StateStore(str(state), "earlier").sync(saved)
    (state_dir / "calibration.json.lock").unlink()
    port = free_port()
    serve = [sys.executable, "-m", "extproc.cli", "serve", "--server-listen", f"127.0.0.1:{port}",
             "--calibration-state-file", str(state), "--calibration-save-interval-s", "0.1",
             "--telemetry-metrics-port", "0"]  # fmt: skip
    script = f"mount --bind {state_dir} {state_dir} && mount -o remount,ro,bind {state_dir} && exec {shlex.join(serve)}"
    router = ManagedProcess("router-ro", ["unshare", "-m", "sh", "-c", script], tmp_path / "router.log", child_env())
    router.start()
    try:
        router.wait_until(lambda: grpc_serving(f"127.0.0.1:{port}"), 60, "SERVING")
        until(lambda: "saves are off" in router.log_tail(50), "the router saying saves are off")
    finally:
        code = router.stop(10.0)  # SIGTERM: one more save attempt on the way out
    log = router.log_path.read_text()
    assert code == 0, log[-2000:]
    assert "state peers loaded: 1" in log  # the file was used, not "starting cold"
    assert log.count("saves are off") == 1 and "Traceback" not in log
