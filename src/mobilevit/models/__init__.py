"""Model families, their building blocks and the registry."""

from mobilevit.models.factory import create_model, from_pretrained, list_models, load_pretrained
from mobilevit.models.mobilevit import MODEL_CONFIGS, MobileViT, MobileViTConfig, MobileViTFeatures

__all__ = [
    "MODEL_CONFIGS",
    "MobileViT",
    "MobileViTConfig",
    "MobileViTFeatures",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_pretrained",
]
