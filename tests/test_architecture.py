"""The package's layering: imports flow one way (see docs/architecture.md).

Reads every module of `tfdnc` with `ast` (imports inside functions count too)
and checks that no module imports one of a higher layer and that neither
modules nor packages import each other in a loop. Run it alone with

    python -m pytest -q tests/test_architecture.py
"""

from __future__ import annotations

import ast
import os
from collections import defaultdict

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tfdnc")

# Lowest first. A module may import its own layer and the layers below it.
# Keep in step with the table in docs/architecture.md.
LAYERS = [
    ("tfdnc", "tfdnc.utils", "tfdnc.rundir"),
    ("tfdnc.datasets", "tfdnc.data", "tfdnc.clustering"),
    ("tfdnc.distances", "tfdnc.miners", "tfdnc.layers", "tfdnc.losses", "tfdnc.backbones", "tfdnc.distributed",
     "tfdnc.hub_backbones", "tfdnc.optimizers"),
    ("tfdnc.pretrain",),
    ("tfdnc.evaluation",),
    ("tfdnc.training",),
    ("tfdnc.config", "tfdnc.presets"),
    ("tfdnc.exporting",),
    ("tfdnc.serving", "tfdnc.loading", "tfdnc.index"),
    ("tfdnc.model",),
    ("tfdnc.evaluation_cli", "tfdnc.report", "tfdnc.train"),
    ("tfdnc.cli",),
]

# Imports that still run against the layering, each with the change that removes it.
KNOWN_UPWARD: set[tuple[str, str]] = set()  # exporting -> serving: gone (gallery lists with tfdnc.utils)


def _modules() -> dict[str, str]:
    modules = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = "tfdnc" + path[len(ROOT):-3].replace(os.sep, ".")
                modules[module.removesuffix(".__init__")] = path
    return modules


def _import_graph() -> dict[str, set[str]]:
    """module -> the tfdnc modules it imports (and the packages whose __init__ that runs)."""
    modules = _modules()

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package
                    for _ in range(node.level - 1):
                        parent = parent.rpartition(".")[0]
                    base = f"{parent}.{base}" if base else parent
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] != "tfdnc":
                    continue
                target = resolve(name)
                parts = target.split(".")
                # Importing a.b.c runs a/b/__init__.py first.
                for end in range(2, len(parts) + 1):
                    step = ".".join(parts[:end])
                    if step != module and not module.startswith(step + "."):
                        graph[module].add(step)
    return graph


def _group(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _layer_of() -> dict[str, int]:
    return {group: i for i, groups in enumerate(LAYERS) for group in groups}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_layer():
    layer = _layer_of()
    missing = sorted({_group(m) for m in _modules()} - set(layer))
    assert not missing, f"place {missing} in LAYERS here and in the table of docs/architecture.md"


def _upward(graph: dict[str, set[str]]) -> list[str]:
    layer = _layer_of()
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if layer.get(_group(target), -1) > layer.get(_group(module), len(LAYERS))
        and (_group(module), _group(target)) not in KNOWN_UPWARD
    )


def test_no_module_imports_a_higher_layer():
    upward = _upward(_import_graph())
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_no_import_cycle_between_modules():
    assert _cycles(_import_graph()) == []


def test_no_import_cycle_between_packages():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in _import_graph().items():
        for target in targets:
            if _group(module) != _group(target) and (_group(module), _group(target)) not in KNOWN_UPWARD:
                packages[_group(module)].add(_group(target))
    assert _cycles(packages) == []


def test_the_checks_report_what_they_exist_for():
    """An upward import and a loop, planted in a copy of the real graph, are found."""
    graph = _import_graph()
    assert "tfdnc.distributed.gather" in graph["tfdnc.model"]  # lazy and package imports are read
    assert "tfdnc.evaluation.embedding" in graph["tfdnc.training.recluster"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["tfdnc.losses.margin"].add("tfdnc.training.schedule")
    assert _upward(planted) == ["tfdnc.losses.margin -> tfdnc.training.schedule"]
    planted = {k: set(v) for k, v in graph.items()}
    planted["tfdnc.training.schedule"].add("tfdnc.training.fit_inputs")
    assert ["tfdnc.training.fit_inputs", "tfdnc.training.schedule"] in _cycles(planted)
