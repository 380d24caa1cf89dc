"""The import structure (docs/architecture.md): no import cycles, imports inside functions only for
optional extras, and ``import mobilevit`` stays light. The layer order itself is import-linter's
contract in pyproject.toml, checked by ``lint-imports`` in scripts/test.sh."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

import mobilevit

SRC = Path(mobilevit.__file__).parent
# Extras a user may not have installed (pyproject's optional-dependencies): imported where used. A name
# covers its submodules; torch.utils.tensorboard is an extra (it needs tensorboard), torch is not.
OPTIONAL = {
    "onnx",
    "onnxruntime",
    "onnxscript",
    "coremltools",
    "executorch",
    "torchao",
    "litert_torch",
    "ai_edge_litert",
    "ai_edge_quantizer",  # comes with litert-torch (fp16 .tflite weights)
    "timm",
    "transformers",
    "tensorboard",
    "torch.utils.tensorboard",
    "matplotlib",
    "torchmetrics",
    "pycocotools",
}


def _optional(module: str) -> bool:
    return any(module == name or module.startswith(f"{name}.") for name in OPTIONAL)


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycles():
    graph = grimp.build_graph("mobilevit")
    assert len(graph.modules) > 40  # the whole package was read
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for module in ("a", "b", "c"):
        graph.add_module(module)
    graph.add_import(importer="a", imported="b")
    graph.add_import(importer="b", imported="c")
    assert _cycles(graph) == []
    graph.add_import(importer="c", imported="a")
    assert _cycles(graph) == [["a", "b", "c"]]


def _function_level_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.Import):
                    names = [alias.name for alias in inner.names]
                elif isinstance(inner, ast.ImportFrom):
                    names = [inner.module or ""]
                else:
                    continue
                found += [f"{path.relative_to(SRC)}:{inner.lineno} {n}" for n in names if not _optional(n)]
    return found


@pytest.mark.parametrize(
    ("module", "optional"),
    [
        ("matplotlib.figure", True),
        ("torch.utils.tensorboard", True),
        ("torch.utils.tensorboard.writer", True),
        ("torch", False),
        ("torch.utils", False),
        ("torch.utils.data", False),
        ("matplotlibx", False),
    ],
)
def test_an_extra_covers_its_submodules_only(module, optional):
    assert _optional(module) is optional


def test_imports_inside_functions_are_only_for_optional_extras():
    found = [hit for path in sorted(SRC.rglob("*.py")) for hit in _function_level_imports(path)]
    assert found == []


def test_import_mobilevit_loads_no_datasets_or_plotting():
    code = (
        "import sys, mobilevit; "
        "print(sorted(m for m in ('torch', 'torchvision', 'torchvision.datasets', 'matplotlib') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


@pytest.mark.parametrize("name", mobilevit.__all__)
def test_every_public_name_resolves(name):
    assert getattr(mobilevit, name) is not None
