"""Loading a script that is not in a package (benchmarks/render.py, docs/hooks.py, scripts/*.py) as a module,
the way the docs build loads them: by its path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_script(path: Path, name: str) -> ModuleType:
    """The module of the file at ``path``, registered as ``name`` (dataclasses in it need sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
