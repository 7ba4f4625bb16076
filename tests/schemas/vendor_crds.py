"""Refresh the vendored CRD schemas (a maintainer's tool; the tests only read the JSON it writes).

    python tests/schemas/vendor_crds.py GATEWAY_API_CHECKOUT GIE_CHECKOUT ENVOY_GATEWAY_CHECKOUT

Each CRD's ``openAPIV3Schema`` for the served version we use is written as JSON with every
``description`` removed (they are most of the bytes and play no part in validation). The sources,
versions and licences are listed in tests/schemas/SOURCES.md; keep it in step with ``CRDS``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parent / "crds"
# (checkout index, tag, path, version)
CRDS = [
    (0, "v1.6.1", "config/crd/standard/gateway.networking.k8s.io_httproutes.yaml", "v1"),
    (1, "v1.6.0", "config/crd/bases/inference.networking.k8s.io_inferencepools.yaml", "v1"),
    *[
        (2, "v1.9.0", f"charts/gateway-helm/charts/crds/crds/generated/gateway.envoyproxy.io_{name}.yaml", "v1alpha1")
        for name in ("envoyextensionpolicies", "clienttrafficpolicies", "backendtrafficpolicies")
    ],
]


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(checkouts: list[str]) -> None:
    for index, tag, path, version in CRDS:
        text = subprocess.run(
            ["git", "-C", checkouts[index], "show", f"{tag}:{path}"], check=True, capture_output=True, text=True
        ).stdout
        crd = yaml.safe_load(text)
        spec = crd["spec"]
        served = next(v for v in spec["versions"] if v["name"] == version)
        schema = strip(served["schema"]["openAPIV3Schema"])
        name = f"{spec['group']}_{spec['names']['kind']}_{version}.json"
        (OUT / name).write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n")
        print(f"{name}: {tag} {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
