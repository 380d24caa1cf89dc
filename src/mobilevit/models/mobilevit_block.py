"""The MobileViT block (paper, Section 3.1): local convs, unfold, transformer over patches, fold, fusion."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilevit.models.layers import ConvNormAct


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows ordered q, k, v)."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"transformer dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.attn_drop = attn_dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, tokens: int) -> torch.Tensor:
        """[S*N, d] -> [S*N, d]: attention within each of the S sequences of ``tokens`` rows."""
        dim = x.shape[-1]
        # [S*N, 3d] -> [3, S, heads, N, d/heads]
        qkv = self.qkv(x).reshape(-1, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.attn_drop if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)  # [S, heads, N, d/heads]
        # projected as [S, N, d]: flattening first would be a view of an order torch.export cannot keep
        return self.proj(x.transpose(1, 2).reshape(-1, tokens, dim)).flatten(0, 1)


class FeedForward(nn.Module):
    """Linear d -> ffn, SiLU, dropout ``ffn_dropout``, Linear ffn -> d, dropout ``dropout`` (ml-cvnets'
    ``ffn_dropout`` and ``dropout``: the published recipes set only the second)."""

    def __init__(self, dim: int, hidden: int, dropout: float, ffn_dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU(inplace=True)  # on fc1's output, which nothing else reads
        self.drop1 = nn.Dropout(ffn_dropout)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class TransformerEncoderLayer(nn.Module):
    """Pre-norm transformer layer: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(
        self, dim: int, ffn_dim: int, num_heads: int, dropout: float, attn_dropout: float, ffn_dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, attn_dropout)
        self.drop = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = FeedForward(dim, ffn_dim, dropout, ffn_dropout)

    def forward(self, x: torch.Tensor, tokens: int) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), tokens))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """L encoder layers followed by one final LayerNorm: the block's global representation.

    The layers see the tokens of all sequences as one [S*N, d] matrix: norms and linears are then
    plain matrix ops (one Gemm each in ONNX, with no reshape around it), and only attention needs the
    sequences apart.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float,
        attn_dropout: float,
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerEncoderLayer(dim, ffn_dim, num_heads, dropout, attn_dropout, ffn_dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequences, tokens, dim = x.shape
        x = x.reshape(sequences * tokens, dim)  # [S*N, d]
        for layer in self.layers:
            x = layer(x, tokens)
        return self.norm(x).reshape(sequences, tokens, dim)  # [S, N, d]


def unfold(x: torch.Tensor, patch_size: int, by_slices: bool = True) -> torch.Tensor:
    """[B, d, H, W] -> [B*P, N, d]: P = patch_size**2 pixel positions, N = H*W/P patches.

    Pixel position (i, j) of every patch is the strided slice ``[i::p, j::p]`` of the map seen as
    [B, H, W, d] (a view, free when ``x`` is channels_last); stacking the P slices is the one copy.
    Written this way, ONNX Runtime runs it as a layout change and P block copies of d-vectors, which
    it does much faster than the equivalent single 6-D transpose (``pixel_unshuffle`` + transpose).
    ``by_slices=False`` is that transpose, for backends that take no strided slice (XNNPACK).
    """
    batch, dim, height, width = x.shape
    p = patch_size
    x = x.permute(0, 2, 3, 1)  # [B, H, W, d]
    if by_slices:
        x = torch.stack([x[:, i::p, j::p] for i in range(p) for j in range(p)], dim=1)  # [B, P, h, w, d]
    else:
        x = x.reshape(batch, height // p, p, width // p, p, dim).permute(0, 2, 4, 1, 3, 5)  # [B, p, p, h, w, d]
    return x.reshape(batch * p * p, (height // p) * (width // p), dim)  # [B*P, N, d]


def fold(x: torch.Tensor, patch_size: int, height: int, width: int, channels_last: bool = False) -> torch.Tensor:
    """[B*P, N, d] -> [B, d, H, W]: the exact inverse of :func:`unfold`, laid out in the requested
    memory format. The patches are put back in [B, H, W, d] order first (moving whole d-vectors),
    which ONNX Runtime's blocked convolutions then read directly; a contiguous result costs eager
    mode a second copy."""
    p = patch_size
    batch_area, _, dim = x.shape
    batch = batch_area // (p * p)
    x = x.reshape(batch, p, p, height // p, width // p, dim)  # [B, p, p, h, w, d]
    x = x.permute(0, 3, 1, 4, 2, 5).reshape(batch, height, width, dim)  # [B, H, W, d]
    x = x.permute(0, 3, 1, 2)  # [B, d, H, W], channels_last strides
    return x if channels_last else x.contiguous()


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

    unfold_by_slices = True  # see :func:`unfold`; an export for XNNPACK sets it False on its copy

    @staticmethod
    def config_options(cfg: Any, dilation: int) -> dict[str, Any]:
        """The block's arguments from a size's config; v1 blocks are never dilated (ml-cvnets, HF)."""
        return {
            "num_heads": cfg.num_heads,
            "patch_size": cfg.patch_size,
            "dropout": cfg.transformer_dropout,
            "attn_dropout": cfg.attn_dropout,
            "ffn_dropout": cfg.ffn_dropout,
        }

    def __init__(
        self,
        channels: int,
        dim: int,
        depth: int,
        ffn_dim: int,
        num_heads: int = 4,
        patch_size: int = 2,
        dropout: float = 0.0,
        attn_dropout: float = 0.0,
        ffn_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.local_rep = nn.Sequential()
        self.local_rep.add_module("conv_kxk", self.local_conv(channels))
        self.local_rep.add_module("conv_1x1", nn.Conv2d(channels, dim, 1, bias=False))
        self.global_rep = Transformer(dim, depth, ffn_dim, num_heads, dropout, attn_dropout, ffn_dropout)
        self.conv_proj = ConvNormAct(dim, channels, 1)
        self.fusion = self.fusion_conv(channels, dim)

    @staticmethod
    def local_conv(channels: int) -> nn.Module:
        return ConvNormAct(channels, channels, 3)

    @staticmethod
    def fusion_conv(channels: int, dim: int) -> nn.Module:
        """Mixes the block input (C) with the global features (C)."""
        return ConvNormAct(2 * channels, channels, 3)

    def global_features(self, local: torch.Tensor) -> torch.Tensor:
        """Unfold into patches, transformer, fold back, project to C: [B, d, H, W] -> [B, C, H, W]."""
        channels_last = local.is_contiguous(memory_format=torch.channels_last) and not local.is_contiguous()
        height, width = local.shape[-2:]
        p = self.patch_size
        x, resize = resize_to_patches(local, p, align_corners=False)  # [B, d, H', W']
        new_h, new_w = x.shape[-2:]
        x = self.global_rep(unfold(x, p, self.unfold_by_slices))  # [B*P, N, d]
        x = fold(x, p, new_h, new_w, channels_last)  # [B, d, H', W']
        if resize:
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return self.conv_proj(x)  # [B, C, H, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.global_features(self.local_rep(x))
        return self.fusion(torch.cat((x, y), dim=1))  # [B, 2C, H, W] -> [B, C, H, W]
