"""The shape of medkit.io: imports run one way, no heavy imports at module level, functions a page or two."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import medkit.io
from medkit import errors
from medkit.io import dicom, readers
from medkit.registries import READERS

IO = Path(medkit.io.__file__).parent


def _io_imports(path: Path, modules: set[str]) -> set[str]:
    """medkit.io submodules a file imports, at module level or inside functions."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            deps |= {a.name.split(".")[2] for a in node.names if a.name.startswith("medkit.io.")}
        elif isinstance(node, ast.ImportFrom) and node.level:
            deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module == "medkit.io":
            deps |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medkit.io."):
            deps.add(node.module.split(".")[2])
    return (deps & modules) - {path.stem}


def _import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in IO.glob("*.py")}
    return {p.stem: _io_imports(p, modules) for p in IO.glob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep, [*stack, dep])):
                return found
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node, [node])):
            return found
    return None


def test_import_graph_has_no_cycle():
    graph = _import_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    # the lower layers never reach back up to the readers
    for low in ("dicom", "medmnist", "windows", "_checks"):
        assert "readers" not in graph[low], low
    assert graph["windows"] == set() and graph["_checks"] == set()


def test_cycle_check_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_dicom_reader_is_registered_from_dicom_module():
    entry = READERS.get("dicom")
    assert entry.factory is dicom.read_dicom_image is readers.read_dicom_image
    assert entry.flags["suffixes"] == (".dcm", ".dicom", ".dic")
    assert readers.ImageReadError is errors.ImageReadError
    assert readers.MAX_PIXELS == dicom.MAX_PIXELS == 1 << 28


def test_no_heavy_module_level_imports():
    code = (
        "import sys\n"
        "import medkit.io.readers, medkit.io.dicom, medkit.io.medmnist, medkit.io.inspect, medkit.io.slide\n"
        "print(','.join(m for m in ('torch', 'cv2', 'pydicom', 'pandas', 'typer') if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"importing medkit.io loaded: {proc.stdout.strip()}"


def test_functions_are_a_page_or_two():
    long = []
    for path in sorted(IO.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                long.append(f"{path.name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long
