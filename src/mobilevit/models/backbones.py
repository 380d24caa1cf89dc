"""The backbone families: one row per family (its config table, classifier and features_only
classes), so the registry, DeepLabv3 and SSDLite take any size of v1, v2 or v3 through one lookup."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from torch import nn

from mobilevit.models.mobilevit import MODEL_CONFIGS, MobileViT, MobileViTConfig, MobileViTFeatures, override_config
from mobilevit.models.mobilevitv2 import V2_CONFIGS, MobileViTV2, MobileViTV2Config, MobileViTV2Features
from mobilevit.models.mobilevitv3 import (
    V3_CONFIGS,
    V3_V2_CONFIGS,
    MobileViTV3,
    MobileViTV3Features,
    MobileViTV3V2,
    MobileViTV3V2Features,
)

BackboneConfig = MobileViTConfig | MobileViTV2Config


@dataclass(frozen=True)
class Family:
    """One model family: its sizes and the classes that build them."""

    label: str  # as error messages and listings name it
    configs: Mapping[str, BackboneConfig]
    classifier: type[MobileViT]
    features: type[MobileViTFeatures]
    v2_blocks: bool  # separable-attention blocks: their local conv can be dilated (``dilate_local_conv``)


FAMILIES: tuple[Family, ...] = (
    Family("MobileViT v1", MODEL_CONFIGS, MobileViT, MobileViTFeatures, v2_blocks=False),
    Family("MobileViTv2", V2_CONFIGS, MobileViTV2, MobileViTV2Features, v2_blocks=True),
    Family("MobileViTv3 (on v1)", V3_CONFIGS, MobileViTV3, MobileViTV3Features, v2_blocks=False),
    Family("MobileViTv3 (on v2)", V3_V2_CONFIGS, MobileViTV3V2, MobileViTV3V2Features, v2_blocks=True),
)
BACKBONE_FAMILIES: dict[str, Family] = {name: family for family in FAMILIES for name in family.configs}
BACKBONES: dict[str, BackboneConfig] = {name: family.configs[name] for name, family in BACKBONE_FAMILIES.items()}


def family_of(name: str) -> Family:
    if name not in BACKBONE_FAMILIES:
        raise ValueError(f"unknown backbone {name!r}; valid names: {', '.join(sorted(BACKBONES))}")
    return BACKBONE_FAMILIES[name]


def resolve_backbone_config(name: str, overrides: dict[str, Any]) -> BackboneConfig:
    """The config of the backbone size ``name`` with ``overrides``; unknown names or fields raise ValueError."""
    return override_config(family_of(name).configs, name, overrides)


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
    family = family_of(name)
    if family.v2_blocks:
        return family.features(name, cfg, out_indices, output_stride, dilate_local_conv)
    if not dilate_local_conv:
        raise ValueError("dilate_local_conv applies to MobileViTv2-style backbones only")
    return family.features(name, cfg, out_indices=out_indices, output_stride=output_stride)
