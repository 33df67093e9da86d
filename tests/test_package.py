"""Package-level guarantees: a light import, a valid napari manifest, and a test suite that
refuses to run without the reference implementation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_is_light() -> None:
    code = (
        "import sys, napari_sam2\n"
        "heavy = [m for m in ('torch', 'qtpy', 'PyQt6', 'PyQt5', 'PySide6', 'napari') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert callable(napari_sam2.load_model)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_manifest_is_valid_and_registered() -> None:
    from importlib.metadata import entry_points

    import npe2

    eps = [ep for ep in entry_points(group="napari.manifest") if ep.name == "napari-sam2"]
    assert eps, "napari.manifest entry point not registered (is the package installed?)"
    manifest = npe2.PluginManifest.from_file(ROOT / "src" / "napari_sam2" / "napari.yaml")
    assert manifest.name == "napari-sam2"


def test_suite_fails_without_the_reference(tmp_path: Path) -> None:
    fake = tmp_path / "sam2"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('sam2 is hidden for this test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT / "src")]))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_package.py",
         "-k", "light"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "sam2==1.1.0 is required" in result.stdout + result.stderr


def _import_cycles(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), i.e. import circles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.find_modules_directly_imported_by(module):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_circles() -> None:
    """No module of the package imports, directly or through others, a module that imports it
    back (imports under ``TYPE_CHECKING`` included)."""
    import grimp

    graph = grimp.build_graph("napari_sam2")
    assert len(graph.modules) > 50
    assert _import_cycles(graph) == []

    # the detector itself finds a circle when there is one
    graph.add_import(importer="napari_sam2.core.stacks.source", imported="napari_sam2.api")
    assert any("napari_sam2.api" in group for group in _import_cycles(graph))


def test_core_and_widgets_compose_rather_than_mix_in() -> None:
    """No class in core/ or widgets/ is assembled from mixins: none is named or derives from a
    ``*Mixin``, and none has two or more bases that are classes of this package."""
    import ast

    package = ROOT / "src" / "napari_sam2"
    ours: set[str] = set()
    classes: list[tuple[str, ast.ClassDef]] = []
    for folder in ("core", "widgets"):
        for path in sorted((package / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ClassDef):
                    ours.add(node.name)
                    classes.append((str(path.relative_to(package)), node))
    assert len(classes) > 20
    offending = []
    for where, node in classes:
        bases = [ast.unparse(b).split("[")[0].split(".")[-1] for b in node.bases]
        if node.name.endswith("Mixin") or any(b.endswith("Mixin") for b in bases):
            offending.append(f"{where}: {node.name}({', '.join(bases)})")
        elif sum(b in ours for b in bases) >= 2:
            offending.append(f"{where}: {node.name}({', '.join(bases)})")
    assert offending == []


def test_core_exports_the_predictors_without_the_wings() -> None:
    """User code reaches the predictors from ``napari_sam2.core``; importing it is light."""
    code = (
        "import sys, napari_sam2.core as core\n"
        "assert 'torch' not in sys.modules\n"
        "from napari_sam2.core.image.mask_generator import SAM2AutomaticMaskGenerator\n"
        "from napari_sam2.core.image.predictor import SAM2ImagePredictor\n"
        "from napari_sam2.core.video.predictor import SAM2VideoPredictor\n"
        "assert core.SAM2ImagePredictor is SAM2ImagePredictor\n"
        "assert core.SAM2VideoPredictor is SAM2VideoPredictor\n"
        "assert core.SAM2AutomaticMaskGenerator is SAM2AutomaticMaskGenerator\n"
        "assert {'FramePrompt', 'FrameSource', 'Normalization', 'PreEncoder'} <= set(dir(core))\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
