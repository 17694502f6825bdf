"""The package layout holds: layers import downwards only, packages form no import cycle, functions stay short."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "medkit"
#: Packages that the training engine and the CLI build on; none of them may import the engine or the CLI.
LOWER = (
    "data",
    "io",
    "audit",
    "split",
    "tile",
    "competitions",
    "metrics",
    "losses",
    "models",
    "optim",
    "tasks",
    "submit",
    "ensemble",
)


def _unit(path: Path) -> str:
    """The package a module belongs to (``engine``, ``io``, ...), or the module's name for top-level modules."""
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> set[str]:
    """Every medkit unit a module imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "medkit" and len(parts) > 1:
                unit = parts[1]
                if (ROOT / unit).is_dir() or (ROOT / f"{unit}.py").is_file():
                    out.add(unit)
    return out


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        unit = _unit(path)
        graph[unit] |= _imports(path) - {unit}
    return graph


def test_lower_packages_never_import_the_engine_or_the_cli() -> None:
    graph = _graph()
    bad = {u: sorted(graph[u] & {"engine", "cli"}) for u in LOWER if graph[u] & {"engine", "cli"}}
    assert bad == {}
    assert "cli" not in graph["engine"]


def test_packages_form_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(u: str, path: list[str]) -> bool:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                cycle.extend([*path, u, v])
                return True
            if v not in state and visit(v, [*path, u]):
                return True
        state[u] = 2
        return False

    for u in sorted(graph):
        if u not in state and visit(u, []):
            break
    assert cycle == []


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    first = (
        body[1]
        if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        else body[0]
    )
    return fn.end_lineno - first.lineno + 1


@pytest.mark.parametrize("unit", ["engine", *LOWER, "cli"])
def test_functions_are_a_page_or_two(unit: str) -> None:
    """No function body (after its docstring) is longer than 90 lines: a Typer command's options may make its
    signature long, but what it does must still fit on a page or two."""
    files = [ROOT / f"{unit}.py"] if (ROOT / f"{unit}.py").is_file() else sorted((ROOT / unit).rglob("*.py"))
    long = [
        f"{path.relative_to(ROOT)}:{node.name} ({_body_lines(node)} lines)"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _body_lines(node) > 90
    ]
    assert long == []
