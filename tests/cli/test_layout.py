"""The layout of :mod:`napari_sam2.cli`: only the package's entry points import ``main``, and its
modules import one another without a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_sam2.cli

PACKAGE = "napari_sam2.cli"
FOLDER = Path(napari_sam2.cli.__file__).parent
ENTRY_POINTS = {"__init__", "__main__"}


def _imported_siblings(path: Path) -> set[str]:
    """The modules of ``napari_sam2.cli`` that the module at ``path`` imports."""
    modules = {p.stem for p in FOLDER.glob("*.py")}
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 1:
            base = f"{PACKAGE}.{node.module}" if node.module else PACKAGE
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            head, _, rest = name.partition(f"{PACKAGE}.")
            if not head and rest.split(".")[0] in modules:
                found.add(rest.split(".")[0])
    return found - {path.stem}


def test_only_the_entry_points_import_main() -> None:
    graph = {p.stem: _imported_siblings(p) for p in FOLDER.glob("*.py")}
    assert {"main", "track", "common"} <= set(graph)
    importers = {name for name, imports in graph.items() if "main" in imports}
    assert importers <= ENTRY_POINTS, importers


def test_no_import_circles() -> None:
    graph = {p.stem: _imported_siblings(p) for p in FOLDER.glob("*.py")}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, " -> ".join((*path, name))
        if name not in done:
            for imported in sorted(graph[name]):
                visit(imported, (*path, name))
            done.add(name)

    for name in sorted(graph):
        visit(name, ())
