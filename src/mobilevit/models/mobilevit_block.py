"""The MobileViT block (paper, Section 3.1): local convs, unfold, transformer over patches, fold, fusion."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mobilevit.models.layers import ConvNormAct


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows ordered q, k, v)."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        # [B, N, 3d] -> [3, B, heads, N, d/heads]
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        drop = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class FeedForward(nn.Module):
    """Linear d -> ffn, SiLU, dropout, Linear ffn -> d, dropout."""

    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TransformerEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, drop: float, attn_drop: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, attn_drop)
        self.drop = nn.Dropout(drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, ffn_dim, drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """L encoder layers followed by one final LayerNorm: the block's global representation."""

    def __init__(self, dim: int, depth: int, ffn_dim: int, num_heads: int, drop: float, attn_drop: float) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            *(TransformerEncoderLayer(dim, ffn_dim, num_heads, drop, attn_drop) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.layers(x))


def unfold(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[B, d, H, W] -> [B*P, N, d]: P = patch_size**2 pixel positions, N = H*W/P patches.

    A non-overlapping patch unfold is ``pixel_unshuffle`` followed by a transpose to tokens; written
    as one reshape-permute-reshape it costs a single copy, which reads whole d-vectors when ``x`` is
    channels_last.
    """
    batch, dim, height, width = x.shape
    p = patch_size
    x = x.reshape(batch, dim, height // p, p, width // p, p)  # [B, d, h, p, w, p]
    x = x.permute(0, 3, 5, 2, 4, 1)  # [B, p, p, h, w, d]
    return x.reshape(batch * p * p, (height // p) * (width // p), dim)  # [B*P, N, d]


def fold(x: torch.Tensor, patch_size: int, height: int, width: int, channels_last: bool = False) -> torch.Tensor:
    """[B*P, N, d] -> [B, d, H, W]: the exact inverse of :func:`unfold`, in one copy, laid out in
    the requested memory format (``pixel_shuffle`` would need a second copy)."""
    p = patch_size
    batch_area, _, dim = x.shape
    batch = batch_area // (p * p)
    x = x.reshape(batch, p, p, height // p, width // p, dim)  # [B, p, p, h, w, d]
    if channels_last:
        x = x.permute(0, 3, 1, 4, 2, 5).reshape(batch, height, width, dim)  # [B, H, W, d]
        return x.permute(0, 3, 1, 2)  # [B, d, H, W], channels_last strides
    return x.permute(0, 5, 3, 1, 4, 2).reshape(batch, dim, height, width)  # [B, d, H, W]


def resize_to_patches(x: torch.Tensor, patch_size: int, align_corners: bool) -> tuple[torch.Tensor, bool]:
    """Bilinearly resize ``x`` up to sides that are multiples of ``patch_size``; also say whether it did.

    A traced or shape-generic exported graph always resizes (to the same size when the sides are
    already multiples, an exact identity): a size test here would be frozen into the graph.
    """
    height, width = x.shape[-2:]
    p = patch_size
    new_h, new_w = (height + p - 1) // p * p, (width + p - 1) // p * p
    resize = torch.jit.is_tracing() or isinstance(height, torch.SymInt) or (new_h, new_w) != (height, width)
    if resize:
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=align_corners)
    return x, resize


class MobileViTBlock(nn.Module):
    """Local representation (3x3 conv, 1x1 conv to d), global representation over unfolded
    patches (transformer), fold, 1x1 projection back to C, and fusion with the block input.

    Feature maps whose sides are not multiples of the patch size are bilinearly resized up to the
    next multiple before unfolding and back after folding, as the official implementation does.
    """

    def __init__(
        self,
        channels: int,
        dim: int,
        depth: int,
        ffn_dim: int,
        num_heads: int = 4,
        patch_size: int = 2,
        drop: float = 0.0,
        attn_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.local_rep = nn.Sequential()
        self.local_rep.add_module("conv_kxk", ConvNormAct(channels, channels, 3))
        self.local_rep.add_module("conv_1x1", nn.Conv2d(channels, dim, 1, bias=False))
        self.global_rep = Transformer(dim, depth, ffn_dim, num_heads, drop, attn_drop)
        self.conv_proj = ConvNormAct(dim, channels, 1)
        self.fusion = ConvNormAct(2 * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        x = self.local_rep(x)  # [B, d, H, W]
        height, width = x.shape[-2:]
        p = self.patch_size
        x, resize = resize_to_patches(x, p, align_corners=False)  # [B, d, H', W']
        new_h, new_w = x.shape[-2:]
        x = self.global_rep(unfold(x, p))  # [B*P, N, d]
        x = fold(x, p, new_h, new_w, channels_last)  # [B, d, H', W']
        if resize:
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        x = self.conv_proj(x)  # [B, C, H, W]
        return self.fusion(torch.cat((shortcut, x), dim=1))  # [B, 2C, H, W] -> [B, C, H, W]
