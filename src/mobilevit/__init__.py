"""MobileViT (Mehta & Rastegari, ICLR 2022): models as published, every public checkpoint format.

The public names below load on first use (PEP 562), so ``import mobilevit`` itself imports neither
torch nor torchvision (whose own ``__init__`` imports its datasets) nor matplotlib: a CLI start or a
``mobilevit.__version__`` check stays instant, and each name costs only what it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC: dict[str, str] = {
    "CheckpointError": "mobilevit.errors",
    "CheckpointMismatchError": "mobilevit.errors",
    "DownloadError": "mobilevit.hub",
    "MobileViT": "mobilevit.models",
    "MobileViTFeatures": "mobilevit.models",
    "convert_state_dict": "mobilevit.convert",
    "create_model": "mobilevit.models",
    "from_pretrained": "mobilevit.models",
    "list_models": "mobilevit.models",
    "list_pretrained": "mobilevit.models",
    "optimize_for_inference": "mobilevit.export.optimize",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mobilevit' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
