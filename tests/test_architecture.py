"""The package's import graph: no cycle, and no layer imports one above it (docs/ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "async_nerf_ns"
LAYERS = [
    "files", "layout", "trajectory", "lidar", "partition", "shards", "convert", "data", "model",
    "evaluation", "viewer", "pipeline", "engine", "method", "cluster", "check", "scripts",
]
"""Bottom to top: a module may import modules of its own layer or of layers below it."""


def _module_name(path: Path, package: Path) -> str:
    parts = ["async_nerf_ns", *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: Set[str]) -> Set[str]:
    """Our modules that ``path`` imports (at module level or inside functions: both must respect the layers)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    return found


def _graph(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    paths = sorted(package.rglob("*.py"))
    modules = {_module_name(p, package) for p in paths}
    return {_module_name(p, package): _imports(p, modules) - {_module_name(p, package)} for p in paths}


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:  # the package itself: it only registers numpy types (files layer)
        return 0
    return LAYERS.index(parts[1])


def test_every_module_belongs_to_a_layer():
    unknown = [m for m in _graph() if m != "async_nerf_ns" and m.split(".")[1] not in LAYERS]
    assert not unknown, f"modules outside the layers of docs/ARCHITECTURE.md: {unknown}"


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})"
        for module, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert not upward, "\n".join(upward)


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: List[List[str]] = []

    def visit(module: str, path: List[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_the_import_graph_has_no_cycle():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_an_upward_edge_and_a_cycle(tmp_path):
    """The checks above can fail: a data module importing the model, and two modules importing each other."""
    fake = tmp_path / "async_nerf_ns"
    for folder in ("data", "model"):
        (fake / folder).mkdir(parents=True)
        (fake / folder / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "data" / "a.py").write_text("from async_nerf_ns.model.b import X\n")
    (fake / "model" / "b.py").write_text("def f():\n    from async_nerf_ns.model.c import Y\n")
    (fake / "model" / "c.py").write_text("import async_nerf_ns.model.b\n")
    graph = _graph(fake)
    assert "async_nerf_ns.model.b" in graph["async_nerf_ns.data.a"]
    assert _layer("async_nerf_ns.model.b") > _layer("async_nerf_ns.data.a")
    assert _cycles(graph) == [["async_nerf_ns.model.b", "async_nerf_ns.model.c", "async_nerf_ns.model.b"]]
