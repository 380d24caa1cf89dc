"""DeepLabv3 semantic segmentation on a MobileViT backbone (paper, Section 4.2.2).

The backbone (MobileViT v1 or v2) runs at output stride 16 (the last stage dilated instead of
strided; 8 as an option) and the DeepLabv3 head (Chen et al., 2017) classifies every pixel of its
last feature map: ASPP with a 1x1 branch, three dilated 3x3 branches (rates 6, 12, 18), image
pooling, all with 256 channels (512 on v2, as ml-cvnets' recipe), then a 1x1 projection, dropout 0.1
and a 1x1 classifier. The logits are upsampled to the input size.

State-dict keys: ``backbone.*`` are those of :class:`~mobilevit.models.mobilevit.MobileViTFeatures`
(so classification checkpoints initialise it), ``head.*`` the DeepLabv3 head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mobilevit.models.backbones import BACKBONES, BackboneConfig, backbone_features
from mobilevit.models.layers import ConvNormAct
from mobilevit.models.mobilevit import MobileViTConfig, PretrainedMixin, _init_weights, check_input
from mobilevit.models.mobilevitv2 import MobileViTV2Config

# Registered names -> backbone size. VOC has 20 classes and the background.
SEGMENTATION_MODELS = {f"deeplabv3_{name}": name for name in BACKBONES}
DEFAULT_SEGMENTATION_CLASSES = 21
IGNORE_INDEX = 255  # mask value of pixels that count for neither loss nor metrics (VOC's object borders)
# ASPP width of the official recipes: 256 on v1 (the paper), 512 on v2 (ml-cvnets' VOC config).
ASPP_CHANNELS = {MobileViTConfig: 256, MobileViTV2Config: 512}
# The head options of DeepLabV3 and their defaults (aspp_channels None: the family's ASPP_CHANNELS).
SEGMENTATION_DEFAULTS: dict[str, Any] = {
    "output_stride": 16,
    "aspp_channels": None,
    "aspp_rates": (6, 12, 18),
    "aspp_dropout": 0.1,
    "dilate_local_conv": True,
    "align_corners": False,
}


def _init_classifier(conv: nn.Conv2d) -> None:
    """Small logits at the start (std 0.01, zero bias): Kaiming-initialised over 256 channels they
    start large and the first epochs are spent shrinking them."""
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)


class ASPPPooling(nn.Module):
    """Image pooling branch of ASPP: global average, 1x1 conv, broadcast back to the map's size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv_1x1 = ConvNormAct(in_channels, out_channels, 1, act_layer=nn.ReLU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        x = self.conv_1x1(self.pool(x))  # [B, C_out, 1, 1]
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: five parallel branches, concatenated and projected."""

    def __init__(
        self, in_channels: int, out_channels: int = 256, rates: tuple[int, ...] = (6, 12, 18), dropout: float = 0.1
    ) -> None:
        super().__init__()
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, 1, act_layer=nn.ReLU)]
        branches += [ConvNormAct(in_channels, out_channels, 3, dilation=r, act_layer=nn.ReLU) for r in rates]
        branches.append(ASPPPooling(in_channels, out_channels))
        self.convs = nn.ModuleList(branches)
        self.project = ConvNormAct(len(branches) * out_channels, out_channels, 1, act_layer=nn.ReLU)
        self.dropout = nn.Dropout2d(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.cat([branch(x) for branch in self.convs], dim=1)  # [B, 5 * C_out, h, w]
        return self.dropout(self.project(x))  # [B, C_out, h, w]


class DeepLabV3Head(nn.Module):
    """ASPP, then a 1x1 classifier with bias: per-pixel class logits at the feature resolution."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        rates: tuple[int, ...] = (6, 12, 18),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, channels, rates, dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.aspp(x))


class DeepLabV3(PretrainedMixin, nn.Module):
    """MobileViT backbone + DeepLabv3 head. ``forward`` maps [B, 3, H, W] images (RGB in [0, 1])
    to [B, num_classes, H, W] logits; ``forward_logits`` stops before the upsampling."""

    task = "segmentation"
    backbone_prefix = "backbone."
    task_pretrained_cfg: ClassVar[Mapping[str, Any]] = {
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": "backbone.stem.conv",
        "classifier": "head.classifier",
        "ignore_index": IGNORE_INDEX,
    }
    head_defaults: ClassVar[Mapping[str, Any]] = SEGMENTATION_DEFAULTS

    def __init__(
        self,
        name: str,
        cfg: BackboneConfig,
        num_classes: int = DEFAULT_SEGMENTATION_CLASSES,
        output_stride: int = SEGMENTATION_DEFAULTS["output_stride"],
        aspp_channels: int | None = SEGMENTATION_DEFAULTS["aspp_channels"],
        aspp_rates: tuple[int, ...] = SEGMENTATION_DEFAULTS["aspp_rates"],
        aspp_dropout: float = SEGMENTATION_DEFAULTS["aspp_dropout"],
        dilate_local_conv: bool = SEGMENTATION_DEFAULTS["dilate_local_conv"],
        align_corners: bool = SEGMENTATION_DEFAULTS["align_corners"],
    ) -> None:
        super().__init__()
        self.output_stride = output_stride
        self.aspp_channels = aspp_channels  # None: the family's (ASPP_CHANNELS)
        self.aspp_rates = tuple(aspp_rates)
        self.aspp_dropout = aspp_dropout
        self.dilate_local_conv = dilate_local_conv
        # The final resize as the weights' origin did it: ml-cvnets from v0.2 on (its MobileViTv2
        # segmenters) aligns corners; v0.1 and Hugging Face do not.
        self.align_corners = align_corners
        backbone = SEGMENTATION_MODELS[name]
        self.backbone = backbone_features(backbone, cfg, (4,), output_stride, dilate_local_conv)
        channels = aspp_channels or ASPP_CHANNELS[type(cfg)]
        self.head = DeepLabV3Head(cfg.channels[-1], num_classes, channels, self.aspp_rates, aspp_dropout)
        _init_weights(self.head)
        _init_classifier(self.head.classifier)
        self._describe(name, cfg, BACKBONES[backbone], 512, num_classes)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_classes, H/os, W/os] (os = output stride, sides rounded up)."""
        return self.head(self.backbone(x)[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.config.in_chans)
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners)

    def reset_classifier(self, num_classes: int) -> None:
        """A freshly initialised 1x1 classifier for ``num_classes`` (fine-tuning on other labels)."""
        self.num_classes = num_classes
        self.pretrained_cfg["num_classes"] = num_classes
        self.head.classifier = nn.Conv2d(self.head.classifier.in_channels, num_classes, 1)
        _init_classifier(self.head.classifier)
