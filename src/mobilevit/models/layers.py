"""Building blocks shared by every MobileViT family: conv-norm-act, inverted residual, classifier head."""

from __future__ import annotations

import torch
from torch import nn


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` without going below 90% of it (MobileNetV2 rule)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvNormAct(nn.Sequential):
    """Conv2d (no bias) + BatchNorm2d + optional activation (SiLU unless ``act_layer`` says
    otherwise), with 'same' padding for odd kernels at any dilation."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        groups: int = 1,
        act: bool = True,
        dilation: int = 1,
        act_layer: type[nn.Module] = nn.SiLU,
    ) -> None:
        padding = (kernel_size - 1) // 2 * dilation
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=False,
        )
        self.bn = nn.BatchNorm2d(out_channels)
        # In place: the activation overwrites the BatchNorm output, which nothing else reads, so eager
        # mode does not allocate fresh memory for every large activation map.
        self.act = act_layer(inplace=True) if act else nn.Identity()


class InvertedResidual(nn.Module):
    """MobileNetV2 block (the paper's "MV2"): 1x1 expand, 3x3 depthwise, linear 1x1 project.
    ``dilation`` > 1 (with stride 1) replaces a downsampling block in dilated backbones."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: float, dilation: int = 1) -> None:
        super().__init__()
        hidden = make_divisible(round(in_channels * expansion), 8)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.expand = ConvNormAct(in_channels, hidden, 1)
        self.depthwise = ConvNormAct(hidden, hidden, 3, stride=stride, groups=hidden, dilation=dilation)
        self.project = ConvNormAct(hidden, out_channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.use_residual else out


class ClassifierHead(nn.Module):
    """Global average pool, dropout, linear: the head of every MobileViT classifier."""

    def __init__(self, in_features: int, num_classes: int, drop_rate: float) -> None:
        super().__init__()
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop(self.flatten(self.global_pool(x)))
        return x if pre_logits else self.fc(x)
