"""MobileViT (Mehta & Rastegari, ICLR 2022): models as published, every public checkpoint format."""

from mobilevit.convert import convert_state_dict
from mobilevit.errors import CheckpointError, CheckpointMismatchError
from mobilevit.export.optimize import optimize_for_inference
from mobilevit.hub import DownloadError
from mobilevit.models import (
    MobileViT,
    MobileViTFeatures,
    create_model,
    from_pretrained,
    list_models,
    list_pretrained,
    load_pretrained,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "DownloadError",
    "MobileViT",
    "MobileViTFeatures",
    "__version__",
    "convert_state_dict",
    "create_model",
    "from_pretrained",
    "list_models",
    "list_pretrained",
    "load_pretrained",
    "optimize_for_inference",
]
