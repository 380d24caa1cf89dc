"""Model families, their building blocks and the registry."""

from mobilevit.models.factory import create_model, from_pretrained
from mobilevit.models.mobilevit import MODEL_CONFIGS, MobileViT, MobileViTConfig, MobileViTFeatures
from mobilevit.models.mobilevitv2 import V2_CONFIGS, MobileViTV2, MobileViTV2Config, MobileViTV2Features
from mobilevit.models.mobilevitv3 import V3_CONFIGS, V3_V2_CONFIGS, MobileViTV3, MobileViTV3V2
from mobilevit.models.registry import REGISTRY, get_entry, list_models, list_pretrained

__all__ = [
    "MODEL_CONFIGS",
    "REGISTRY",
    "V2_CONFIGS",
    "V3_CONFIGS",
    "V3_V2_CONFIGS",
    "MobileViT",
    "MobileViTConfig",
    "MobileViTFeatures",
    "MobileViTV2",
    "MobileViTV2Config",
    "MobileViTV2Features",
    "MobileViTV3",
    "MobileViTV3V2",
    "create_model",
    "from_pretrained",
    "get_entry",
    "list_models",
    "list_pretrained",
]
