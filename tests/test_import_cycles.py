"""No two modules import each other, imports inside functions included (lint-imports checks
layers, not cycles within a layer); the atomic writers live in a leaf module."""

from __future__ import annotations

import ast
from pathlib import Path

import tomllib

import kdistill

ROOT = Path(kdistill.__file__).parent


def _modules() -> dict[str, tuple[Path, bool]]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (f, is_pkg)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):  # every import, at any depth
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join(pkg + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                for alias in node.names:
                    target = f"{base}.{alias.name}"
                    deps.add(target if target in mods else base)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def test_no_two_modules_import_each_other():
    graph = _graph()
    assert graph["kdistill.engine.trainer"] and graph["kdistill.data.arrays"]  # the walk found imports
    pairs = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if a in graph[b]})
    assert pairs == [], f"import cycles: {pairs}"


def test_the_atomic_writers_are_a_leaf_every_writer_uses():
    graph = _graph()
    assert graph["kdistill.atomic"] == set()
    users = {m for m, deps in graph.items() if "kdistill.atomic" in deps}
    assert {"kdistill.runs.folder", "kdistill.engine.trainer", "kdistill.report.html"} <= users
    contract = tomllib.loads((ROOT.parents[1] / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = contract["contracts"][0]["layers"]
    assert any("atomic" in layer.split(" | ") for layer in layers)
    # siblings are independent wherever the code allows: no ':' group is left
    assert not [layer for layer in layers if ":" in layer]
