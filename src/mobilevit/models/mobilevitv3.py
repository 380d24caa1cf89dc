"""MobileViTv3 (Wadekar & Chaurasia, arXiv 2209.15159): MobileViT blocks that fuse local and global
features with a 1x1 conv and add the block input as a residual.

Two families, each on the network of its predecessor (official code: github.com/micronDLA/MobileViTv3):

- ``mobilevitv3_{xxs,xs,s}`` on v1 (``MobileViTv3-v1/``): multi-head attention, wider layer3..layer5
  (one row of ``V3_CONFIGS`` each);
- ``mobilevitv3_{050,075,100}`` on v2 (``MobileViTv3-v2/``): separable self-attention, v2's widths
  (one width multiplier of ``V3_V2_CONFIGS`` each).

Both reuse their predecessor's stem, MV2 stages, head and API unchanged; only the MobileViT block of
layer3..layer5 is replaced.
"""

from __future__ import annotations

import torch
from torch import nn

from mobilevit.models.layers import ConvNormAct
from mobilevit.models.mobilevit import MobileViT, MobileViTConfig, MobileViTFeatures
from mobilevit.models.mobilevit_block import MobileViTBlock, resize_to_patches
from mobilevit.models.mobilevitv2 import (
    MobileViTV2,
    MobileViTV2Block,
    MobileViTV2Config,
    MobileViTV2Features,
    fold_v2,
    unfold_v2,
)

# MobileViTv3-v1/cvnets/models/classification/config/mobilevit.py, modes "{xx_small,x_small,small}_v3":
# v1's table with layer3..layer5 widened (the v3 block is cheaper: depthwise local conv, 1x1 fusion).
# Transformer widths, depths, MV2 expansion and the final min(4 C5, 960) conv are v1's; dropouts
# are those of MobileViTv3-v1/config/classification/mobilevitv3_*_oneserver.yaml (= v1's).
V3_CONFIGS: dict[str, MobileViTConfig] = {
    "mobilevitv3_xxs": MobileViTConfig(
        channels=(16, 24, 64, 80, 128),
        transformer_dims=(64, 80, 96),
        expansion=2.0,
        transformer_dropout=0.05,
    ),
    "mobilevitv3_xs": MobileViTConfig(
        channels=(32, 48, 96, 160, 160),
        transformer_dims=(96, 120, 144),
        expansion=4.0,
        transformer_dropout=0.1,
    ),
    "mobilevitv3_s": MobileViTConfig(
        channels=(32, 64, 128, 256, 320),
        transformer_dims=(144, 192, 240),
        expansion=4.0,
        transformer_dropout=0.1,
    ),
}

# MobileViTv3-v2/cvnets/models/classification/config/mobilevit_v3.py: v2's widths for every
# multiplier (its make_divisible rounding equals v2's int(c * w) at 0.5, 0.75 and 1.0), no classifier
# dropout, no final 1x1 conv.
V3_V2_CONFIGS: dict[str, MobileViTV2Config] = {
    f"mobilevitv3_{round(100 * m):03d}": MobileViTV2Config(width_multiplier=m) for m in (0.5, 0.75, 1.0)
}


class MobileViTV3Block(MobileViTBlock):
    """The v3 block on v1: v1's block with three changes. The 1x1 fusion mixes each position on its
    own (a simpler task than v1's 3x3) and, with the depthwise conv, makes the block cheap enough to
    widen layer3..layer5 at about v1's cost; the residual eases training of the deeper fused path.

    1. the local 3x3 conv is depthwise;
    2. fusion concatenates the *local* features (d channels, not the block input) with the global
       ones (C) and mixes them with a 1x1 conv (not 3x3);
    3. the block input is added to the fused output.
    """

    @staticmethod
    def local_conv(channels: int) -> nn.Module:
        return ConvNormAct(channels, channels, 3, groups=channels)

    @staticmethod
    def fusion_conv(channels: int, dim: int) -> nn.Module:
        """Mixes the local features (d) with the global ones (C), position by position."""
        return ConvNormAct(dim + channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.local_rep(x)  # [B, d, H, W]
        y = self.global_features(local)  # [B, C, H, W]
        return x + self.fusion(torch.cat((local, y), dim=1))  # [B, d + C, H, W] -> [B, C, H, W]


class MobileViTV3V2Block(MobileViTV2Block):
    """The v3 block on v2: v2's block (already depthwise and fusion-free) whose
    1x1 projection takes the concatenated global and local features (2d -> C) instead of the global
    ones alone, plus the block input as a residual."""

    def __init__(
        self,
        channels: int,
        dim: int,
        depth: int,
        ffn_dim: int,
        patch_size: int = 2,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        dilation: int = 1,
        unfold_remainder: str = "resize",
        ffn_dropout: float = 0.0,
    ) -> None:
        if unfold_remainder != "resize":
            raise ValueError(
                "MobileViTv3 resizes odd-sided maps as its official code does: unfold_remainder must be 'resize'"
            )
        super().__init__(
            channels, dim, depth, ffn_dim, patch_size, dropout, attn_dropout, dilation, ffn_dropout=ffn_dropout
        )
        self.conv_proj = ConvNormAct(2 * dim, channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As in v2, odd sides are resized up (align_corners=True) and not back: the residual and the
        # next stage see the larger map.
        x, _ = resize_to_patches(x, self.patch_size, align_corners=True)  # [B, C, H', W']
        height, width = x.shape[-2:]
        local = self.local_rep(x)  # [B, d, H', W']
        y = self.global_rep(unfold_v2(local, self.patch_size))  # [B, d, P, N]
        y = fold_v2(y, self.patch_size, height, width)  # [B, d, H', W']
        return x + self.conv_proj(torch.cat((y, local), dim=1))  # [B, 2d, H', W'] -> [B, C, H', W']


# The v3 models are their predecessors built with the v3 blocks: the MV2 stages, dilation, head,
# checkpoint keys and API stay exactly v1's or v2's.
class MobileViTV3(MobileViT):
    """MobileViTv3-XXS/XS/S classifier: :class:`MobileViT` with :class:`MobileViTV3Block`."""

    configs = V3_CONFIGS
    block = MobileViTV3Block


class MobileViTV3Features(MobileViTFeatures):
    """MobileViTv3-XXS/XS/S backbone (``features_only=True``), ``output_stride`` 8, 16 or 32."""

    configs = V3_CONFIGS
    block = MobileViTV3Block


class MobileViTV3V2(MobileViTV2):
    """MobileViTv3-0.5/0.75/1.0 classifier: :class:`MobileViTV2` with :class:`MobileViTV3V2Block`."""

    configs = V3_V2_CONFIGS
    block = MobileViTV3V2Block


class MobileViTV3V2Features(MobileViTV2Features):
    """MobileViTv3-0.5/0.75/1.0 backbone (``features_only=True``), ``output_stride`` 8, 16 or 32."""

    configs = V3_V2_CONFIGS
    block = MobileViTV3V2Block
