"""MkDocs hooks: the pages whose content is data are written at build time, never by hand.

- ``<!-- weights-table -->`` becomes the table of every published ``model.tag``, read from the registry
  (``mobilevit.list_pretrained`` and ``mobilevit.models.pretrained.PUBLISHED_WEIGHTS``).
- ``<!-- benchmarks -->`` becomes the benchmarks page, rendered from ``benchmarks/results/*.json`` by
  ``benchmarks/render.py`` (``render_page``).

The API reference is rendered from the docstrings by mkdocstrings; their Sphinx cross-reference roles
(``:func:`name```) are shown as the plain code they name.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

from mobilevit.hub import HubFile
from mobilevit.models.pretrained import PUBLISHED_WEIGHTS, Copy
from mobilevit.models.registry import MODEL_TASKS, list_pretrained

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS_MARKER = "<!-- weights-table -->"
BENCHMARKS_MARKER = "<!-- benchmarks -->"
RESULTS = ROOT / "benchmarks" / "results"
SPHINX_ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|exc|obj):(<code>)~?")
TASK_TITLES = {"classification": "Classification", "segmentation": "Segmentation", "detection": "Detection"}


def _copy_cell(copy: Copy) -> str:
    address = copy.remote.repo_id if isinstance(copy.remote, HubFile) else copy.remote.url
    flip = " (BGR-trained: stem flipped)" if copy.bgr else ""
    return f"{copy.host}: `{address}`{flip}"


def weights_table() -> str:
    """One Markdown table per task: each published ``model.tag``, its input size, the metric its source
    publishes, its licence and its copies in the order they are tried."""
    sections = []
    for task in MODEL_TASKS:
        names = list_pretrained(task=task)
        if not names:
            continue
        lines = [
            f"### {TASK_TITLES.get(task, task)}",
            "",
            "| `model.tag` | input | published metric | licence | copies, in the order tried (host: address) |",
            "|---|---|---|---|---|",
        ]
        for name in names:
            w = PUBLISHED_WEIGHTS[name]
            copies = "<br>".join(_copy_cell(c) for c in w.copies)
            lines.append(f"| `{name}` | {w.input_size} | {w.metric} | {w.license} | {copies} |")
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _render_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("benchmarks_render", ROOT / "benchmarks" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def benchmarks_page() -> str:
    return _render_module().render_page(RESULTS)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if WEIGHTS_MARKER in markdown:
        markdown = markdown.replace(WEIGHTS_MARKER, weights_table())
    if BENCHMARKS_MARKER in markdown:
        markdown = markdown.replace(BENCHMARKS_MARKER, benchmarks_page())
    return markdown


def on_page_content(html: str, **kwargs: Any) -> str:
    return SPHINX_ROLE.sub(r"\1", html)
