"""The same network written only in ops that XNNPACK delegates whole (ExecuTorch's and LiteRT's CPU backend).

XNNPACK has no LayerNorm, GroupNorm, reduction over one axis or strided slice, and ExecuTorch decomposes
``scaled_dot_product_attention`` into masking ops XNNPACK does not take either. Each of those cuts the
delegated graph, and the pieces between run on slow reference kernels. :func:`for_xnnpack` swaps them for
equivalent arithmetic (matrix products, means over a 4-D map's spatial axes, element-wise ops), with
constants folded into the weights next to them, so the exported program is one XNNPACK graph that computes
what the model computes (to float rounding).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mobilevit.models.mobilevit_block import MobileViTBlock, MultiHeadAttention, TransformerEncoderLayer
from mobilevit.models.mobilevitv2 import LinearSelfAttention, LinearTransformerLayer


@dataclass(frozen=True)
class Placement:
    """Where an exported program's ops run: ``partitions`` XNNPACK subgraphs holding ``delegated`` ops,
    and the ops left ``outside`` (op name -> count), which the runtime runs on its own, slower kernels
    (ExecuTorch's portable ones, LiteRT's builtin ones) with a copy across each boundary."""

    partitions: int
    delegated: int
    outside: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        plural = "s" if self.partitions != 1 else ""
        where = f"{self.partitions} XNNPACK partition{plural} holding {self.delegated} ops"
        if not self.outside:
            return f"{where}, none outside"
        return f"{where}; outside XNNPACK: " + ", ".join(f"{op} x{n}" for op, n in self.outside.items())


class RowLayerNorm(nn.Module):
    """LayerNorm over the last axis of [M, d] rows, with the means as products with a [1, d] vector of 1/d."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        (dim,) = norm.normalized_shape
        self.register_buffer("average", torch.full((1, dim), 1.0 / dim))
        self.register_buffer("eps", torch.tensor(norm.eps))
        self.affine = _Affine.of(norm, (dim,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - F.linear(x, self.average)  # [M, d] - [M, 1]
        variance = F.linear(centred * centred, self.average)  # [M, 1]
        return self.affine(centred * torch.rsqrt(variance + self.eps))


class MapGroupNorm(nn.Module):
    """GroupNorm(1) of [B, d, H, W] maps: each mean is a spatial mean ([B, d, 1, 1]), then a 1x1 conv
    with weights 1/d for the mean over channels ([B, 1, 1, 1])."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        if norm.num_groups != 1:
            raise ValueError(f"only GroupNorm(1) is rewritten, got {norm.num_groups} groups")
        dim = norm.num_channels
        self.register_buffer("average", torch.full((1, dim, 1, 1), 1.0 / dim))
        self.register_buffer("eps", torch.tensor(norm.eps))
        self.affine = _Affine.of(norm, (1, dim, 1, 1))

    def _mean(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x.mean(dim=(2, 3), keepdim=True), self.average)  # [B, 1, 1, 1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - self._mean(x)
        return self.affine(centred * torch.rsqrt(self._mean(centred * centred) + self.eps))


class _Affine(nn.Module):
    """A norm's elementwise scale and shift, shaped to broadcast; nothing when the norm has none (its
    affine was folded into the projection after it, see :func:`fold_norm_affines`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    @staticmethod
    def of(norm: nn.LayerNorm | nn.GroupNorm, shape: tuple[int, ...]) -> nn.Module:
        if norm.weight is None:
            return nn.Identity()
        return _Affine(norm.weight.detach().clone().reshape(shape), norm.bias.detach().clone().reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight + self.bias


class BatchedMatmulAttention(nn.Module):
    """:class:`MultiHeadAttention` as two batched matrix products around a softmax; the 1/sqrt(d/heads)
    scale is folded into the query rows of the qkv projection."""

    def __init__(self, attention: MultiHeadAttention) -> None:
        super().__init__()
        self.num_heads = attention.num_heads
        dim = attention.qkv.in_features
        scale = (dim // self.num_heads) ** -0.5
        self.query, self.key, self.value = (_linear_rows(attention.qkv, i * dim, dim) for i in range(3))
        self.query.weight.data.mul_(scale)
        self.query.bias.data.mul_(scale)
        self.proj = copy.deepcopy(attention.proj)

    def _heads(self, x: torch.Tensor, tokens: int) -> torch.Tensor:
        """[S*N, d] -> [S*heads, N, d/heads]"""
        dim = x.shape[-1]
        x = x.reshape(-1, tokens, self.num_heads, dim // self.num_heads).permute(0, 2, 1, 3)
        return x.reshape(-1, tokens, dim // self.num_heads)

    def forward(self, x: torch.Tensor, tokens: int) -> torch.Tensor:
        """[S*N, d] -> [S*N, d]"""
        dim = x.shape[-1]
        q, k, v = (self._heads(f(x), tokens) for f in (self.query, self.key, self.value))
        attention = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)  # [S*heads, N, N]
        x = torch.bmm(attention, v)  # [S*heads, N, d/heads]
        x = x.reshape(-1, self.num_heads, tokens, dim // self.num_heads).permute(0, 2, 1, 3)  # [S, N, heads, d/h]
        return self.proj(x.reshape(-1, dim))


class SpatialMeanSelfAttention(nn.Module):
    """:class:`LinearSelfAttention` with the query, keys and values as three 1x1 convs (no split), and
    the context's sum over the N patches as N times the spatial mean of the [B, d*P, 1, N] view."""

    def __init__(self, attention: LinearSelfAttention) -> None:
        super().__init__()
        dim = attention.dim
        rows = ((0, 1), (1, dim), (1 + dim, dim))  # query, keys, values
        self.query, self.key, self.value = (_conv_rows(attention.qkv_proj, start, n) for start, n in rows)
        self.out_proj = copy.deepcopy(attention.out_proj)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, dim, positions, patches = x.shape
        # the softmax sees a 3-D view: XNNPACK's programs run convs channels-last, and ExecuTorch (1.5)
        # then applies a softmax over the last axis of their 4-D output to the wrong axis
        scores = torch.softmax(self.query(x).reshape(batch, positions, patches), dim=-1)
        scores = scores.reshape(batch, 1, positions, patches)  # [B, 1, P, N]
        weighted = (self.key(x) * scores).reshape(batch, dim * positions, 1, patches)
        context = weighted.mean(dim=(2, 3), keepdim=True).reshape(batch, dim, positions, 1) * float(patches)
        return self.out_proj(F.relu(self.value(x)) * context)  # [B, d, P, N]


def _linear_rows(linear: nn.Linear, start: int, rows: int) -> nn.Linear:
    out = nn.Linear(linear.in_features, rows)
    out.weight.data.copy_(linear.weight.detach()[start : start + rows])
    out.bias.data.copy_(linear.bias.detach()[start : start + rows])
    return out


def _conv_rows(conv: nn.Conv2d, start: int, rows: int) -> nn.Conv2d:
    out = nn.Conv2d(conv.in_channels, rows, 1)
    out.weight.data.copy_(conv.weight.detach()[start : start + rows])
    out.bias.data.copy_(conv.bias.detach()[start : start + rows])
    return out


_REWRITES = {
    nn.LayerNorm: RowLayerNorm,
    nn.GroupNorm: MapGroupNorm,
    MultiHeadAttention: BatchedMatmulAttention,
    LinearSelfAttention: SpatialMeanSelfAttention,
}


def for_xnnpack(
    model: nn.Module,
    keep: tuple[type[nn.Module], ...] = (),
    replace: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] | None = None,
) -> nn.Module:
    """A copy of ``model`` (in eval mode) in XNNPACK's ops: see the module docstring, with the
    transformer layers' norm affines folded (:func:`fold_norm_affines`). Modules of the types in
    ``keep`` stay as they are (for a converter that already writes them in ops XNNPACK takes); ``replace``
    gives a type another rewrite (a runtime that takes other ops)."""
    model = copy.deepcopy(model).eval()
    fold_norm_affines(model)
    rewrites = {kind: rewrite for kind, rewrite in {**_REWRITES, **(replace or {})}.items() if kind not in keep}
    _rewrite_children(model, rewrites)
    for module in model.modules():
        if isinstance(module, MobileViTBlock):
            module.unfold_by_slices = False
    return model


def fold_norm_affines(model: nn.Module) -> None:
    """Move, in place, the scale and shift of each transformer layer's two norms into the projection that
    reads the norm (attention's qkv, the feed-forward's first layer): W' = W diag(scale), b' = b + W shift.
    Exact, and two elementwise passes fewer per norm, which the runtimes do not fold themselves in every
    case (LiteRT's int8 files keep them as fp32 ops)."""
    for layer in model.modules():
        if isinstance(layer, TransformerEncoderLayer):
            pairs = ((layer.norm1, layer.attn.qkv), (layer.norm2, layer.mlp.fc1))
        elif isinstance(layer, LinearTransformerLayer):
            pairs = ((layer.norm1, layer.attn.qkv_proj), (layer.norm2, layer.mlp.fc1))
        else:
            continue
        for norm, projection in pairs:
            if norm.weight is not None and projection.bias is not None:
                _fold_affine(norm, projection)


def _fold_affine(norm: nn.LayerNorm | nn.GroupNorm, projection: nn.Linear | nn.Conv2d) -> None:
    with torch.no_grad():
        weight = projection.weight.flatten(1)  # [out, in] (a 1x1 conv's [out, in, 1, 1] too)
        projection.bias.add_(weight @ norm.bias)
        projection.weight.mul_(norm.weight.reshape(1, -1, *[1] * (projection.weight.ndim - 2)))
    norm.weight = norm.bias = None
    if isinstance(norm, nn.LayerNorm):
        norm.elementwise_affine = False
    else:
        norm.affine = False


def _rewrite_children(module: nn.Module, rewrites: dict[type, type]) -> None:
    for name, child in module.named_children():
        rewrite = rewrites.get(type(child))
        if rewrite is not None:
            setattr(module, name, rewrite(child).eval())
        else:
            _rewrite_children(child, rewrites)
