"""The backbone families the task heads build on: one place that maps a size name to its config
table and its features_only model, so DeepLabv3 and SSDLite take any of them (v1, v2, v3)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from torch import nn

from mobilevit.models.mobilevit import MODEL_CONFIGS, MobileViTConfig, MobileViTFeatures, resolve_config
from mobilevit.models.mobilevitv2 import V2_CONFIGS, MobileViTV2Config, MobileViTV2Features, resolve_v2_config
from mobilevit.models.mobilevitv3 import (
    V3_CONFIGS,
    V3_V2_CONFIGS,
    MobileViTV3Features,
    MobileViTV3V2Features,
    resolve_v3_config,
)

BackboneConfig = MobileViTConfig | MobileViTV2Config
BACKBONES: dict[str, BackboneConfig] = {**MODEL_CONFIGS, **V2_CONFIGS, **V3_CONFIGS, **V3_V2_CONFIGS}


def resolve_backbone_config(name: str, overrides: dict[str, Any]) -> BackboneConfig:
    """The config of the backbone size ``name`` with ``overrides``; unknown names or fields raise ValueError."""
    if name in V3_CONFIGS or name in V3_V2_CONFIGS:
        return resolve_v3_config(name, overrides)
    if name in V2_CONFIGS:
        return resolve_v2_config(name, overrides)
    if name in MODEL_CONFIGS:
        return resolve_config(name, overrides)
    raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")


def config_fields(cfg: BackboneConfig) -> set[str]:
    return {f.name for f in fields(cfg)}


def backbone_features(
    name: str,
    cfg: BackboneConfig,
    out_indices: tuple[int, ...],
    output_stride: int = 32,
    dilate_local_conv: bool = True,
) -> nn.Module:
    """The features_only model of the backbone ``name``. At output stride 16 or 8, the v1-style
    blocks (v1, v3 on v1) are never dilated (ml-cvnets and Hugging Face agree); the v2-style local
    conv (v2, v3 on v2) is, in ml-cvnets (``dilate_local_conv=False``: as Hugging Face's port)."""
    if name in V3_V2_CONFIGS:
        return MobileViTV3V2Features(name, cfg, out_indices, output_stride, dilate_local_conv)
    if name in V2_CONFIGS:
        return MobileViTV2Features(name, cfg, out_indices, output_stride, dilate_local_conv)
    if not dilate_local_conv:
        raise ValueError("dilate_local_conv applies to MobileViTv2-style backbones only")
    if name in V3_CONFIGS:
        return MobileViTV3Features(name, cfg, out_indices, output_stride)
    return MobileViTFeatures(name, cfg, out_indices=out_indices, output_stride=output_stride)
