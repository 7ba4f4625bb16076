"""The Kubernetes manifests: rendered from the fleet's shape, valid against the Kubernetes and CRD
schemas (offline: kubernetes-validate's schemas and the CRD schemas vendored in tests/schemas/), and
consistent: the router's capacities are the pools' replicas x max_num_seqs, every backend exists."""

from __future__ import annotations

import argparse
import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from extproc.commands import deploy_config
from extproc.config import Config, add_config_flags, config_from_args
from extproc.deploy import kubernetes as k8s

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "tests" / "schemas" / "crds"
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")) + sorted(
    (ROOT / "envoy" / "gateway").glob("*.yaml")
)
# The oldest Kubernetes the manifests promise (gRPC probes are GA since 1.27) and the newest schemas shipped.
BUILTIN_GROUPS = {"", "apps", "policy", "autoscaling"}
K8S_VERSIONS = ("1.29", kubernetes_validate.latest_version())


def objects(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.name}:{o['kind']}/{o['metadata']['name']}", o) for p in MANIFESTS for o in objects(p)]


def _strict(schema: Any) -> Any:
    """The API server prunes unknown fields of a CRD silently: a typo would vanish. Treat every
    object schema that lists its properties as closed, as ``kubectl --validate=strict`` does."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if (
            "properties" in out
            and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")
        ):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    group, _, version = api_version.rpartition("/")
    path = CRD_DIR / f"{group}_{kind}_{version}.json"
    return _strict(json.loads(path.read_text())) if group and path.is_file() else None


def validate(obj: dict[str, Any]) -> None:
    """Raise on the first schema violation: a CRD kind against its vendored schema, a Kubernetes
    kind against kubernetes-validate's strict schemas for every version we promise."""
    schema = crd_schema(obj["apiVersion"], obj["kind"])
    if schema is not None:
        jsonschema.Draft202012Validator(schema).validate(obj)
        return
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


def test_committed_manifests_are_the_render() -> None:
    for rel, text in deploy_config.rendered().items():
        if rel.parts[0] == "deploy":
            assert (ROOT / rel).read_text() == text, f"{rel} drifted; regenerate with `{k8s.COMMAND}`"


@pytest.mark.parametrize(("name", "obj"), all_objects(), ids=[n for n, _ in all_objects()])
def test_manifest_validates_against_its_schema(name: str, obj: dict[str, Any]) -> None:
    validate(obj)


def test_every_kind_has_a_schema() -> None:
    """No object is waved through: one of another API group than Kubernetes' own needs its CRD schema."""
    for name, obj in all_objects():
        group = obj["apiVersion"].rpartition("/")[0]
        if group not in BUILTIN_GROUPS:
            assert crd_schema(obj["apiVersion"], obj["kind"]) is not None, f"{name}: vendor its CRD schema"


@pytest.mark.parametrize(
    ("kind", "path", "bad"),
    [
        (
            "Deployment/budget-router",
            ["spec", "template", "spec", "containers", 0, "readinessProbe", "grpc", "prot"],
            9002,
        ),
        ("Deployment", ["spec", "replicas"], "two"),
        ("InferencePool", ["spec", "targetPorts"], None),
        ("HTTPRoute", ["spec", "rules", 0, "backendRefs", 0, "weigth"], 1),
        ("EnvoyExtensionPolicy", ["spec", "extProc", 0, "failOpen"], "yes"),
    ],
)
def test_a_broken_manifest_fails(kind: str, path: list[Any], bad: Any) -> None:
    """The check can fail: a typo'd field, a wrong type, a missing required field."""
    obj = copy.deepcopy(
        next(o for _, o in all_objects() if kind in (o["kind"], f"{o['kind']}/{o['metadata']['name']}"))
    )
    node = obj
    for key in path[:-1]:
        node = node[key]
    if bad is None:
        del node[path[-1]]
    else:
        node[path[-1]] = bad
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
        validate(obj)


def _router_config(args: list[str]) -> Config:
    parser = argparse.ArgumentParser()
    add_config_flags(parser)
    return config_from_args(parser.parse_args(args[args.index("serve") + 1 :]))


def _flag(args: list[str], name: str) -> int:
    return int(next(a.split("=", 1)[1] for a in args if a.startswith(f"{name}=")))


def test_router_capacities_and_contexts_are_the_pools() -> None:
    docs = {(o["kind"], o["metadata"]["name"]): o for p in MANIFESTS[:3] for o in objects(p)}
    router = docs[("Deployment", "budget-router")]["spec"]["template"]["spec"]["containers"][0]
    cfg = _router_config(router["args"])
    for pool, context, capacity in (
        ("short", cfg.routing.short_context, cfg.spillover.short_capacity),
        ("long", cfg.routing.long_context, cfg.spillover.long_capacity),
    ):
        deployment = docs[("Deployment", f"vllm-{pool}")]
        args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert context == _flag(args, "--max-model-len")
        assert capacity == deployment["spec"]["replicas"] * _flag(args, "--max-num-seqs")
    assert cfg.routing.b_short <= cfg.routing.short_context
    assert cfg.spillover.short_capacity == 256  # 2 replicas x 128: scaling a pool rescales the router


def test_every_backend_and_probe_target_exists() -> None:
    docs = [o for p in MANIFESTS for o in objects(p)]
    services = {o["metadata"]["name"]: o for o in docs if o["kind"] == "Service"}
    pools = {o["metadata"]["name"]: o for o in docs if o["kind"] == "InferencePool"}
    deployments = {o["metadata"]["name"]: o for o in docs if o["kind"] == "Deployment"}
    for obj in docs:
        if obj["kind"] == "HTTPRoute":
            for rule in obj["spec"]["rules"]:
                for ref in rule["backendRefs"]:
                    target = pools if ref.get("kind") == "InferencePool" else services
                    assert ref["name"] in target, ref
        if obj["kind"] == "EnvoyExtensionPolicy":
            for ext in obj["spec"]["extProc"]:
                for ref in ext["backendRefs"]:
                    ports = [p["port"] for p in services[ref["name"]]["spec"]["ports"]]
                    assert ref["port"] in ports
    for pool in pools.values():  # an InferencePool selects the pods of a pool Deployment
        labels = pool["spec"]["selector"]["matchLabels"]
        assert any(labels.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values())
    for svc in services.values():
        selector = svc["spec"]["selector"].items()
        assert any(selector <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values())
    router = deployments["budget-router"]["spec"]["template"]["spec"]["containers"][0]
    assert router["readinessProbe"]["grpc"]["service"] == "envoy.service.ext_proc.v3.ExternalProcessor"
