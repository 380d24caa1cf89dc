"""MobileViTv2 (Mehta & Rastegari, arXiv 2206.02680): MobileViT with separable self-attention.

Against v1: multi-head attention becomes separable (linear) self-attention computed with 1x1 convs on
unfolded [B, d, P, N] tensors, LayerNorm becomes GroupNorm(1), the fusion conv is gone, and every
size is one width multiplier of a single base network (one row of ``V2_CONFIGS``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from mobilevit.models.layers import ConvNormAct, make_divisible
from mobilevit.models.mobilevit import (
    DEFAULT_PRETRAINED_CFG,
    MobileViT,
    MobileViTFeatures,
)
from mobilevit.models.mobilevit_block import resize_to_patches


@dataclass(frozen=True)
class MobileViTV2Config:
    """One MobileViTv2 size: the paper's base network scaled by ``width_multiplier``."""

    width_multiplier: float
    base_channels: tuple[int, int, int, int, int] = (64, 128, 256, 384, 512)  # layer1..layer5 at width 1
    base_stem_channels: int = 32
    transformer_depths: tuple[int, int, int] = (2, 4, 3)  # linear transformer layers in layer3..layer5
    mv2_blocks: tuple[int, int] = (1, 2)  # MV2 blocks in layer1, layer2 (v1 has 3 in layer2)
    attn_ratio: float = 0.5  # d = C / 2 (rounded to a multiple of 8)
    expansion: float = 2.0  # MV2 expansion factor
    ffn_multiplier: int = 2  # ffn dim = 2 d
    patch_size: int = 2
    transformer_dropout: float = 0.0
    attn_dropout: float = 0.0
    ffn_dropout: float = 0.0  # between the FFN's convs
    drop_rate: float = 0.0  # classifier dropout
    in_chans: int = 3
    # Odd-sided maps: "resize" up to even first (ml-cvnets, timm), or "zero": unfold drops the last
    # row/column and fold refills it with zeros (Hugging Face's port; the weights are the same).
    unfold_remainder: str = "resize"

    @property
    def channels(self) -> tuple[int, ...]:
        return tuple(int(c * self.width_multiplier) for c in self.base_channels)

    @property
    def stem_channels(self) -> int:
        return int(self.base_stem_channels * self.width_multiplier)

    @property
    def transformer_dims(self) -> tuple[int, ...]:
        return tuple(make_divisible(self.attn_ratio * c) for c in self.channels[2:])


UNFOLD_REMAINDERS = ("resize", "zero")

V2_CONFIGS: dict[str, MobileViTV2Config] = {
    f"mobilevitv2_{round(100 * m):03d}": MobileViTV2Config(width_multiplier=m)
    for m in (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
}

# Evaluation of the published weights: shorter side resized to 288, centre crop 256.
V2_PRETRAINED_CFG: dict[str, Any] = dict(DEFAULT_PRETRAINED_CFG, crop_pct=0.888)


class LinearSelfAttention(nn.Module):
    """Separable self-attention (paper, Section 3.2): one latent query scores the N patches, the
    softmax-weighted sum of the keys is a single context vector, and it gates ReLU(values).
    Cost is linear in N, and only 1x1 convs and element-wise ops are used (no batched matmul)."""

    def __init__(self, dim: int, attn_dropout: float = 0.0, proj_dropout: float = 0.0) -> None:
        super().__init__()
        self.dim = dim
        self.qkv_proj = nn.Conv2d(dim, 1 + 2 * dim, 1)  # rows ordered: query (1), keys (d), values (d)
        self.attn_drop = nn.Dropout(attn_dropout)
        self.out_proj = nn.Conv2d(dim, dim, 1)
        self.proj_drop = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv_proj(x).split([1, self.dim, self.dim], dim=1)  # [B,1|d|d,P,N]
        scores = self.attn_drop(F.softmax(query, dim=-1))  # [B, 1, P, N], over the N patches
        context = (key * scores).sum(dim=-1, keepdim=True)  # [B, d, P, 1]
        return self.proj_drop(self.out_proj(F.relu(value) * context))  # [B, d, P, N]


class ConvFeedForward(nn.Module):
    """1x1 conv d -> ffn, SiLU, dropout ``ffn_dropout``, 1x1 conv ffn -> d, dropout ``dropout``: v1's FFN
    on [B, d, P, N]."""

    def __init__(self, dim: int, hidden: int, dropout: float, ffn_dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.SiLU(inplace=True)  # on fc1's output, which nothing else reads
        self.drop1 = nn.Dropout(ffn_dropout)
        self.fc2 = nn.Conv2d(hidden, dim, 1)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class LinearTransformerLayer(nn.Module):
    """Pre-norm layer on [B, d, P, N]: x + attn(GN(x)), then x + FFN(GN(x)); GroupNorm(1)
    normalises each sample over (d, P, N), the channel-first stand-in for LayerNorm."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float, attn_dropout: float, ffn_dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(1, dim)
        self.attn = LinearSelfAttention(dim, attn_dropout, dropout)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = ConvFeedForward(dim, ffn_dim, dropout, ffn_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class LinearTransformer(nn.Module):
    """L linear transformer layers followed by one final GroupNorm(1): the block's global representation."""

    def __init__(
        self, dim: int, depth: int, ffn_dim: int, dropout: float, attn_dropout: float, ffn_dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers = (LinearTransformerLayer(dim, ffn_dim, dropout, attn_dropout, ffn_dropout) for _ in range(depth))
        self.layers = nn.Sequential(*layers)
        self.norm = nn.GroupNorm(1, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(x))


def unfold_v2(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, d, H, W] -> [B, d, P, N]: P = patch_size**2 pixel positions (row-major), N = H*W/P patches.

    The direct view [B, d, h, p, w, p] is rank 6, which Core ML does not support. Batch and channels
    are merged instead, so every intermediate has rank <= 5: [B*d, h, p, w, p] -> permute ->
    [B*d, p, p, h, w] -> [B, d, P, N], one copy. The element order equals ``F.unfold`` (timm, HF).
    """
    batch, dim, height, width = x.shape
    p = patch_size
    x = x.reshape(batch * dim, height // p, p, width // p, p)  # [B*d, h, p, w, p]
    x = x.permute(0, 2, 4, 1, 3)  # [B*d, p, p, h, w]
    return x.reshape(batch, dim, p * p, (height // p) * (width // p))  # [B, d, P, N]


def fold_v2(x: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """[B, d, P, N] -> [B, d, H, W]: the exact inverse of :func:`unfold_v2`, also at rank <= 5
    (no col2im, unlike ``F.fold``)."""
    batch, dim = x.shape[:2]
    p = patch_size
    x = x.reshape(batch * dim, p, p, height // p, width // p)  # [B*d, p, p, h, w]
    x = x.permute(0, 3, 1, 4, 2)  # [B*d, h, p, w, p]
    return x.reshape(batch, dim, height, width)  # [B, d, H, W]


class MobileViTV2Block(nn.Module):
    """Local representation (3x3 depthwise conv, 1x1 conv to d), linear transformer over unfolded
    patches, fold, 1x1 projection back to C. No fusion with the block input (paper, Section 3.3).

    Inputs whose sides are not multiples of the patch size are bilinearly resized (align_corners=True)
    up to the next multiple before the local convs and not resized back, as ml-cvnets and timm do (so
    the next stage sees the larger map). Hugging Face instead drops the last row/column in
    ``F.unfold`` and refills it with zeros in ``F.fold``, so it agrees only on even-sided maps.
    """

    @staticmethod
    def config_options(cfg: Any, dilation: int) -> dict[str, Any]:
        """The block's arguments from a size's config, with the stage's dilation for its local conv."""
        return {
            "patch_size": cfg.patch_size,
            "dropout": cfg.transformer_dropout,
            "attn_dropout": cfg.attn_dropout,
            "dilation": dilation,
            "unfold_remainder": cfg.unfold_remainder,
            "ffn_dropout": cfg.ffn_dropout,
        }

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
        super().__init__()
        if unfold_remainder not in UNFOLD_REMAINDERS:
            raise ValueError(f"unfold_remainder must be one of {UNFOLD_REMAINDERS}, got {unfold_remainder!r}")
        self.unfold_remainder = unfold_remainder
        self.patch_size = patch_size
        self.local_rep = nn.Sequential()
        local = ConvNormAct(channels, channels, 3, groups=channels, dilation=dilation)
        self.local_rep.add_module("conv_kxk", local)
        self.local_rep.add_module("conv_1x1", nn.Conv2d(channels, dim, 1, bias=False))
        self.global_rep = LinearTransformer(dim, depth, ffn_dim, dropout, attn_dropout, ffn_dropout)
        self.conv_proj = ConvNormAct(dim, channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unfold_remainder == "zero":
            return self._forward_zero_remainder(x)
        p = self.patch_size
        x, _ = resize_to_patches(x, p, align_corners=True)  # [B, C, H', W'], not resized back
        new_h, new_w = x.shape[-2:]
        x = self.local_rep(x)  # [B, d, H', W']
        x = self.global_rep(unfold_v2(x, p))  # [B, d, P, N]
        x = fold_v2(x, p, new_h, new_w)  # [B, d, H', W']
        return self.conv_proj(x)  # [B, C, H', W']

    def _forward_zero_remainder(self, x: torch.Tensor) -> torch.Tensor:
        """Hugging Face's layout: the global representation sees only the even part of an odd map,
        and the rest of the folded map is zeros."""
        x = self.local_rep(x)  # [B, d, H, W]
        height, width = x.shape[-2:]
        p = self.patch_size
        even_h, even_w = height // p * p, width // p * p
        y = self.global_rep(unfold_v2(x[..., :even_h, :even_w], p))  # [B, d, P, N]
        y = fold_v2(y, p, even_h, even_w)  # [B, d, H - H % p, W - W % p]
        return self.conv_proj(F.pad(y, (0, width - even_w, 0, height - even_h)))  # [B, C, H, W]


class MobileViTV2(MobileViT):
    """MobileViTv2 image classifier with timm's API: ``forward_features``, ``forward_head``,
    ``reset_classifier``, ``pretrained_cfg``. The head pools layer5 directly (no final 1x1 conv)."""

    configs = V2_CONFIGS
    block = MobileViTV2Block
    default_pretrained_cfg = V2_PRETRAINED_CFG
    has_final_conv = False


class MobileViTV2Features(MobileViTFeatures):
    """The v2 backbone alone (``features_only=True``): the feature maps of the stages in
    ``out_indices`` at strides 2, 4, 8, 16 and 32 (at most ``output_stride``, reached by dilation).
    Its keys are the classifier's without ``head``."""

    configs = V2_CONFIGS
    block = MobileViTV2Block
    default_pretrained_cfg = V2_PRETRAINED_CFG
    head_defaults: ClassVar[Mapping[str, Any]] = {"output_stride": 32, "dilate_local_conv": True}

    def __init__(
        self,
        name: str,
        cfg: MobileViTV2Config,
        out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
        output_stride: int = 32,
        dilate_local_conv: bool = True,
    ) -> None:
        super().__init__(name, cfg, out_indices, output_stride, dilate_local_conv=dilate_local_conv)
        self.dilate_local_conv = dilate_local_conv
