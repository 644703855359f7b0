"""The package keeps its shape: imports flow one way (CLI and API on top, stages in the middle, the
store, models and LLM client at the bottom), there are no import circles (function-level imports
count: hiding a circle inside a function does not remove it), and no module imports another's
private name. Read from the source with ast, so it checks every module without importing any."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from helpers import REPO

PACKAGE = REPO / "autointerp"
TOP = ("autointerp.cli", "autointerp.api", "autointerp.__main__")
BOTTOM = (
    "store",
    "models",
    "model_names",
    "llm",
    "corpus",
    "config",
    "errors",
    "untrusted",
    "ranges",
    "faults",
    "packaged",
    "histogram",
)


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    """Module -> the autointerp modules it imports, and every (importer, module, name) whose name
    is private."""
    modules = _modules()
    edges: dict[str, set[str]] = defaultdict(set)
    private = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autointerp"):
                target = node.module or ""
                if target in modules and target != name:
                    edges[name].add(target)
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        private.append((name, target, alias.name))
                    if f"{target}.{alias.name}" in modules:
                        edges[name].add(f"{target}.{alias.name}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.name != name:
                        edges[name].add(alias.name)
    return edges, private


def _layer(module: str) -> int:
    if module.startswith(TOP):
        return 2
    if module == "autointerp" or any(
        module == f"autointerp.{b}" or module.startswith(f"autointerp.{b}.") for b in BOTTOM
    ):
        return 0
    return 1


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_the_analysis_sees_a_circle_and_an_upward_import() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _layer("autointerp.store.core") < _layer("autointerp.harvest") < _layer("autointerp.cli")


def test_no_import_circles() -> None:
    edges, _ = _imports()
    assert len(edges) > 40  # the walk found the package
    assert _cycles(edges) == []


def test_imports_flow_down_the_layers() -> None:
    edges, _ = _imports()
    upward = [(a, b) for a, targets in edges.items() for b in targets if _layer(b) > _layer(a)]
    assert upward == []


def test_no_module_imports_another_modules_private_names() -> None:
    _, private = _imports()
    assert private == []
