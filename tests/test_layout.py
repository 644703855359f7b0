"""The package keeps its shape: imports flow one way (CLI and API on top, stages in the middle, the
store, models and LLM client at the bottom), there are no import circles (function-level imports
count: hiding a circle inside a function does not remove it), and no module imports another's
private name. Read from the source with ast, so it checks every module without importing any."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
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


# ------------------------------------------------------------------------------------------------
# size: a module or a function past these is doing more than one thing

MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 100


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for path in _modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, "over 600 lines: " + ", ".join(f"{k} ({n})" for k, n in sorted(long.items()))


def _long_functions(source: str) -> dict[str, int]:
    """``{"line name": lines}`` of each function over the limit, from ``def`` to its last line,
    nested functions included (a function that registers twenty routes as closures is one long
    function)."""
    long = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                long[f"{node.lineno} {node.name}"] = n
    return long


def test_the_size_check_sees_a_long_nested_function() -> None:
    body = "        x = 1\n" * (MAX_FUNCTION_LINES - 3)
    source = f"def outer():\n    def inner():\n{body}    return inner\n"
    assert _long_functions(source) == {}  # exactly the limit
    longer = source.replace("    return", "    x = 2\n    return")
    assert _long_functions(longer) == {"1 outer": MAX_FUNCTION_LINES + 1}
    assert _long_functions(f"async {longer}") == {"1 outer": MAX_FUNCTION_LINES + 1}


def test_no_function_is_over_100_lines() -> None:
    long = {
        f"{path.relative_to(REPO)}:{where}": n
        for path in _modules().values()
        for where, n in _long_functions(path.read_text()).items()
    }
    assert not long, "over 100 lines: " + ", ".join(f"{k} ({n})" for k, n in sorted(long.items()))


# ------------------------------------------------------------------------------------------------
# light commands: reading the results database must not cost torch's import (seconds) or need it

# Runs one CLI command in a fresh interpreter, then prints which heavy modules it imported. `serve`
# runs as a user starts it (options, app, live-model loader), except that uvicorn.run answers one
# GET /api/models through a TestClient instead of listening; that request must not import them
# either (only the live views load the model, on first use).
PROBE = """
import sys
from autointerp.cli import main

if sys.argv[1] == "serve":
    import uvicorn
    from fastapi.testclient import TestClient

    def answer_once(app, **options):
        response = TestClient(app).get("/api/models")
        print(response.status_code, response.text)

    uvicorn.run = answer_once
status = main(sys.argv[1:])
heavy = [m for m in ("torch", "transformer_lens") if m in sys.modules]
print("heavy:", " ".join(heavy) or "none")
sys.exit(status)
"""


@pytest.fixture(scope="module")
def results_db(tiny_gated: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real database with every kind of row the light commands read (harvest, N2G graphs,
    explanations and scores, similarities, weights)."""
    from apidb import build_api_db

    return build_api_db(tiny_gated, tmp_path_factory.mktemp("light"))


@pytest.mark.parametrize(
    "command",
    [
        ["rank", "tiny-gated"],
        ["rank", "tiny-gated", "--by", "max", "--layer", "1", "--json"],
        ["search", "tiny-gated", "any:the"],
        # by meaning (no --exact) is left out: it runs the sentence-embedding model, on torch
        ["search", "tiny-gated", "--explanations", "capital", "--exact"],
        ["similar", "tiny-gated", "1/0"],
        ["report", "tiny-gated"],
        ["runs"],
        ["serve", "--port", "0"],
    ],
    ids=" ".join,
)
def test_light_commands_import_no_torch(command: list[str], results_db: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *command, "--db", str(results_db)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    *output, last = done.stdout.strip().splitlines()
    assert output and last == "heavy: none", (done.stdout, done.stderr)
    if command[0] == "serve":
        assert output[-1].startswith('200 {"models":[{"name":"tiny-gated"'), output
