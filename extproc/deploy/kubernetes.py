"""Kubernetes manifests for the router and the two pools, rendered from one fleet shape.

``KUBERNETES_FLEET`` (two short replicas, one long) gives the vLLM Deployments their replicas and
flags and the router its contexts and capacities (replicas x ``max_num_seqs``), so scaling a pool
here rescales the router's spillover with it. Three files:

* ``router.yaml``: the router's Deployment (gRPC health probes on the ext_proc service, resources,
  non-root read-only container, spread over nodes), its Service, a PodDisruptionBudget and an HPA;
* ``pools.yaml``: the ``vllm-short`` and ``vllm-long`` Deployments and Services that
  ``envoy/gateway/budget-router.yaml`` (Envoy Gateway) routes to;
* ``inference-pool.yaml``: the Gateway API Inference Extension variant: each pool an ``InferencePool``
  with its own endpoint picker, the router choosing the pool in front of both.

Image names are placeholders for the images built from this repository's Dockerfiles (there is no
public registry image); the tests validate every object against the Kubernetes and CRD schemas.
"""

from __future__ import annotations

from typing import Any

import yaml

from extproc.deploy.compose import GPU_MODEL, STATE_DIR, VLLM_IMAGE
from extproc.deploy.fleet import FleetShape, PoolShape
from extproc.gateway.envoy_config import EXT_PROC_SERVICE

COMMAND = "budget-router deploy-config"
KUBERNETES_FLEET = FleetShape(short=PoolShape("short", 8192, 128, replicas=2), long=PoolShape("long", 65536, 16))
ROUTER_IMAGE = "registry.example.com/budget-router:0.1.0"  # build from ./Dockerfile and push
ROUTER_PORT = 9002
METRICS_PORT = 9464
POOL_PORT = 8000
APP = "app.kubernetes.io/name"
PART_OF = {"app.kubernetes.io/part-of": "budget-router"}
# Gateway API Inference Extension (GIE) v1: InferencePool is inference.networking.k8s.io/v1.
GIE_GROUP = "inference.networking.k8s.io"
GIE_VERSION = "v1"
GATEWAY = "llm-gateway"


def _meta(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "labels": {APP: name, **PART_OF}, **extra}


def router_args(fleet: FleetShape) -> list[str]:
    return [
        "serve",
        f"--server-listen=0.0.0.0:{ROUTER_PORT}",
        *fleet.router_flags(),
        f"--calibration-state-file={STATE_DIR}/calibration.json",
        "--telemetry-metrics-host=0.0.0.0",
        f"--telemetry-metrics-port={METRICS_PORT}",
    ]


def _grpc_probe(period: int, failures: int) -> dict[str, Any]:
    return {
        "grpc": {"port": ROUTER_PORT, "service": EXT_PROC_SERVICE},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def router_deployment(fleet: FleetShape) -> dict[str, Any]:
    name = "budget-router"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name),
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {APP: name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {APP: name, **PART_OF}},
                "spec": {
                    # SIGTERM: NOT_SERVING at once (the readiness probe drops the pod), streams drain
                    # for server.grace_period_s (25 s), calibration is saved.
                    "terminationGracePeriodSeconds": 35,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 10001,
                        "runAsGroup": 10001,
                        "fsGroup": 10001,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "labelSelector": {"matchLabels": {APP: name}},
                                        "topologyKey": "kubernetes.io/hostname",
                                    },
                                }
                            ]
                        }
                    },
                    "containers": [
                        {
                            "name": "router",
                            "image": ROUTER_IMAGE,
                            "args": router_args(fleet),
                            "ports": [
                                {"name": "grpc", "containerPort": ROUTER_PORT, "protocol": "TCP"},
                                {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
                            ],
                            "readinessProbe": _grpc_probe(2, 2),
                            "livenessProbe": {**_grpc_probe(10, 3), "initialDelaySeconds": 5},
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "256Mi"},
                                "limits": {"memory": "1Gi"},  # no CPU limit: throttling adds latency to every request
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "state", "mountPath": STATE_DIR},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    # Per-pod calibration state: a new pod starts from the built-in ratios and learns
                    # within a few samples per category; a ReadWriteMany volume here shares it.
                    "volumes": [{"name": "state", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}}],
                },
            },
        },
    }


def router_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta("budget-router"),
        "spec": {
            "selector": {APP: "budget-router"},
            "ports": [
                {"name": "grpc", "port": ROUTER_PORT, "targetPort": "grpc", "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
            ],
        },
    }


def router_pdb() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta("budget-router"),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {APP: "budget-router"}}},
    }


def router_hpa() -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta("budget-router"),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "budget-router"},
            "minReplicas": 2,
            "maxReplicas": 8,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}},
                },
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def pool_deployment(pool: PoolShape) -> dict[str, Any]:
    name = f"vllm-{pool.name}"
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(name),
        "spec": {
            "replicas": pool.replicas,
            "selector": {"matchLabels": {APP: name}},
            "template": {
                "metadata": {"labels": {APP: name, **PART_OF, "budget-router/pool": pool.name}},
                "spec": {
                    "containers": [
                        {
                            "name": "vllm",
                            "image": VLLM_IMAGE,
                            "command": ["vllm", "serve"],
                            "args": [GPU_MODEL, f"--port={POOL_PORT}", *pool.engine_flags()],
                            "env": [
                                {
                                    "name": "HF_TOKEN",
                                    "valueFrom": {
                                        "secretKeyRef": {"name": "hf-token", "key": "token", "optional": True}
                                    },
                                },
                            ],
                            "ports": [{"name": "http", "containerPort": POOL_PORT}],
                            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5},
                            "startupProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 10,
                                "failureThreshold": 60,
                            },
                            "resources": {"limits": {"nvidia.com/gpu": 1}},
                            "volumeMounts": [{"name": "shm", "mountPath": "/dev/shm"}],
                        }
                    ],
                    "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
                },
            },
        },
    }


def pool_service(pool: PoolShape) -> dict[str, Any]:
    name = f"vllm-{pool.name}"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(name),
        "spec": {"selector": {APP: name}, "ports": [{"name": "http", "port": POOL_PORT, "targetPort": "http"}]},
    }


def inference_pool(pool: PoolShape) -> dict[str, Any]:
    name = f"vllm-{pool.name}"
    return {
        "apiVersion": f"{GIE_GROUP}/{GIE_VERSION}",
        "kind": "InferencePool",
        "metadata": _meta(name),
        "spec": {
            "selector": {"matchLabels": {APP: name}},
            "targetPorts": [{"number": POOL_PORT}],
            # GIE's endpoint picker for this pool (its `inferencepool` Helm chart installs one per
            # pool): it picks the replica by queue and KV-cache load, after the router picked the pool.
            "endpointPickerRef": {"name": f"{name}-epp", "port": {"number": 9002}, "failureMode": "FailOpen"},
        },
    }


def inference_route() -> dict[str, Any]:
    def backend(pool: str) -> dict[str, Any]:
        return {"group": GIE_GROUP, "kind": "InferencePool", "name": f"vllm-{pool}"}

    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "llm", "labels": PART_OF},
        "spec": {
            "parentRefs": [{"name": GATEWAY}],
            "rules": [
                {
                    "matches": [
                        {
                            "path": {"type": "PathPrefix", "value": "/"},
                            "headers": [{"type": "Exact", "name": "x-budget-pool", "value": "short"}],
                        }
                    ],
                    "backendRefs": [backend("short")],
                },
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [backend("long")],
                    "timeouts": {"request": "600s"},
                },
            ],
        },
    }


def _doc(header: str, objects: list[dict[str, Any]]) -> str:
    body = "".join("---\n" + yaml.safe_dump(o, sort_keys=False, width=120) for o in objects)
    return f"# Generated by extproc/deploy/kubernetes.py - do not edit; regenerate: {COMMAND}\n{header}{body}"


def render(fleet: FleetShape = KUBERNETES_FLEET) -> dict[str, str]:
    s, lg = fleet.short, fleet.long
    shape = (
        f"# Fleet: short {s.replicas} x max_num_seqs {s.max_num_seqs} at {s.max_model_len} tokens, long"
        f" {lg.replicas} x {lg.max_num_seqs} at {lg.max_model_len}; the router's capacities are"
        f" {s.capacity} / {lg.capacity}.\n"
    )
    return {
        "router.yaml": _doc(
            "# The router (ext_proc gRPC on :9002, Prometheus on :9464) behind Envoy Gateway's\n"
            "# EnvoyExtensionPolicy (envoy/gateway/budget-router.yaml). With several replicas each sees only\n"
            "# its share of in-flight requests: set live_load (the engines' /metrics) for fleet-wide pressure.\n"
            + shape,
            [router_deployment(fleet), router_service(), router_pdb(), router_hpa()],
        ),
        "pools.yaml": _doc(
            "# The two vLLM pools, one GPU per replica; the HF token (optional) from Secret hf-token, key token.\n"
            + shape,
            [pool_deployment(s), pool_service(s), pool_deployment(lg), pool_service(lg)],
        ),
        "inference-pool.yaml": _doc(
            "# Gateway API Inference Extension variant: apply instead of the HTTPRoute in\n"
            "# envoy/gateway/budget-router.yaml (its EnvoyExtensionPolicy targets this route `llm` too). The\n"
            "# router picks the pool, each pool's endpoint picker (GIE's inferencepool chart, one per pool)\n"
            "# picks the replica. The pools' Deployments are those of pools.yaml.\n",
            [inference_pool(s), inference_pool(lg), inference_route()],
        ),
    }
