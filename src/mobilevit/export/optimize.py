"""``optimize_for_inference``: the same network, rewritten for fast eager inference on CPU.

BatchNorm is folded into the convolution before it, and every convolution and linear layer runs as
one oneDNN call with its activation (and, in inverted residuals, the residual addition) fused in and
its weights reordered once into oneDNN's blocked layout, not on every call. Activations stay
channels_last, the layout those kernels read without a reorder. MobileViTv2's GroupNorms stay: they
normalise per sample and fold into nothing.

The fused kernels are CPU-only. On other devices, and while the module is traced or exported
(TorchScript, ONNX, ``torch.export``), the same modules run plain ``F.conv2d``/``F.linear`` with the
folded weights, so the optimized module stays exportable and device-agnostic.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from mobilevit.models.layers import ConvNormAct, InvertedResidual
from mobilevit.models.mobilevit_block import FeedForward
from mobilevit.models.mobilevitv2 import ConvFeedForward

ACTIVATIONS = {"none": lambda x: x, "swish": F.silu, "relu": F.relu}  # oneDNN's names for the fused post-ops
_ONEDNN_NAMES = {nn.SiLU: "swish", nn.ReLU: "relu", nn.Identity: "none"}


def _onednn_usable(x: torch.Tensor) -> bool:
    """The fused oneDNN kernels: eager CPU float32 only, never while tracing or exporting."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not torch.backends.mkldnn.is_available():
        return False
    exporting = torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
    return not (exporting or torch.compiler.is_compiling())


class FusedConv2d(nn.Module):
    """Conv2d (BatchNorm folded in) + activation, optionally + a residual input: one oneDNN call."""

    def __init__(self, conv: nn.Conv2d, activation: str = "none") -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}")
        self.register_buffer("weight", conv.weight.detach().clone())
        bias = conv.bias.detach().clone() if conv.bias is not None else torch.zeros(conv.out_channels)
        self.register_buffer("bias", bias)
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.activation = activation
        self._packed: torch.Tensor | None = None  # the weight in oneDNN's layout, made on first use

    def _packed_weight(self, x: torch.Tensor) -> torch.Tensor:
        if self._packed is None:
            self._packed = torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(x.shape)
            )
        return self._packed

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if _onednn_usable(x):
            conv_args = (self.bias, self.padding, self.stride, self.dilation, self.groups)
            weight = self._packed_weight(x)
            if residual is None:
                return torch.ops.mkldnn._convolution_pointwise(x, weight, *conv_args, self.activation, [], "")
            if self.activation == "none":  # conv(x) + residual
                return torch.ops.mkldnn._convolution_pointwise.binary(
                    x, residual, weight, *conv_args, "add", None, None, [], None
                )
        out = ACTIVATIONS[self.activation](
            F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        )
        return out if residual is None else out + residual

    def _apply(self, fn, recurse=True):
        self._packed = None  # a move or cast invalidates the reordered copy
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_packed": None}  # oneDNN tensors cannot be copied or pickled


class FusedLinear(nn.Module):
    """Linear + activation through oneDNN, which beats ``F.linear`` on the transformer's shapes."""

    def __init__(self, linear: nn.Linear, activation: str = "none") -> None:
        super().__init__()
        self.register_buffer("weight", linear.weight.detach().clone())
        self.register_buffer("bias", linear.bias.detach().clone())
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _onednn_usable(x):
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.activation, [], "")
        return ACTIVATIONS[self.activation](F.linear(x, self.weight, self.bias))


class FusedInvertedResidual(nn.Module):
    """MV2 with folded BatchNorm: expand+SiLU, depthwise+SiLU, project(+residual), three calls."""

    def __init__(self, block: InvertedResidual) -> None:
        super().__init__()
        self.use_residual = block.use_residual
        self.expand = fuse_conv_norm_act(block.expand)
        self.depthwise = fuse_conv_norm_act(block.depthwise)
        self.project = fuse_conv_norm_act(block.project)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.depthwise(self.expand(x))
        return self.project(out, x if self.use_residual else None)


def fuse_conv_norm_act(block: ConvNormAct) -> FusedConv2d:
    """ConvNormAct in eval mode -> one FusedConv2d with the BatchNorm folded into its weights."""
    conv = fuse_conv_bn_eval(block.conv.eval(), block.bn.eval())
    return FusedConv2d(conv, _activation_name(block.act))


def _activation_name(act: nn.Module) -> str:
    """oneDNN's name for ``act``; any other activation is an error rather than silently dropped."""
    if type(act) not in _ONEDNN_NAMES:
        raise ValueError(f"cannot fuse activation {type(act).__name__}; expected one of SiLU, ReLU, Identity")
    return _ONEDNN_NAMES[type(act)]


def _fuse(module: nn.Module) -> nn.Module:
    """The fused replacement of one module, or the module itself with its children fused."""
    if isinstance(module, ConvNormAct):
        return fuse_conv_norm_act(module)
    if isinstance(module, InvertedResidual):
        return FusedInvertedResidual(module)
    if isinstance(module, FeedForward):
        module.fc1 = FusedLinear(module.fc1, "swish")  # fc1 + SiLU in one call
        module.act = nn.Identity()
        module.fc2 = FusedLinear(module.fc2)
        return module
    if isinstance(module, ConvFeedForward):  # MobileViTv2's FFN: 1x1 convs on [B, d, P, N]
        module.fc1 = FusedConv2d(module.fc1, _activation_name(module.act))  # fc1 + SiLU in one call
        module.act = nn.Identity()
        module.fc2 = FusedConv2d(module.fc2)
        return module
    if isinstance(module, nn.Linear):
        return FusedLinear(module)
    if isinstance(module, nn.Conv2d):
        return FusedConv2d(module)
    for name, child in module.named_children():
        setattr(module, name, _fuse(child))
    return module


@torch.no_grad()
def optimize_for_inference(model: nn.Module, channels_last: bool = True) -> nn.Module:
    """An eval-mode copy of ``model`` with BatchNorm folded and fused oneDNN kernels on CPU.

    Outputs match the original within float rounding (tested at 1e-4). The copy has no trainable
    parameters: fine-tune the original, then optimize it again. Feed channels_last inputs for the
    best speed (``x.contiguous(memory_format=torch.channels_last)``); others are converted by the
    first convolution.
    """
    optimized = _fuse(copy.deepcopy(model).eval())
    if channels_last:
        optimized = optimized.to(memory_format=torch.channels_last)
    return optimized.requires_grad_(False)
