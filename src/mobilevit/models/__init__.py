"""Model families, their building blocks and the registry."""

from mobilevit.models.factory import create_model, from_pretrained, list_models, load_pretrained
from mobilevit.models.mobilevit import MODEL_CONFIGS, MobileViT, MobileViTConfig, MobileViTFeatures
from mobilevit.models.mobilevitv2 import V2_CONFIGS, MobileViTV2, MobileViTV2Config, MobileViTV2Features

__all__ = [
    "MODEL_CONFIGS",
    "V2_CONFIGS",
    "MobileViT",
    "MobileViTConfig",
    "MobileViTFeatures",
    "MobileViTV2",
    "MobileViTV2Config",
    "MobileViTV2Features",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_pretrained",
]
