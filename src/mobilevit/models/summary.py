"""What a model costs: parameters, multiply-accumulates and the shape of every stage's output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mobilevit.models.factory import create_model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass, counted by ``torch.utils.flop_counter``
    (convolutions, linears and attention matmuls; one MAC is two FLOPs).

    The counter has no formula for the CPU flash-attention kernel, so attention runs through the
    math backend here, whose matmuls it does count.
    """
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def describe(name: str, img_size: tuple[int, int] = (256, 256), num_classes: int = 1000) -> dict[str, Any]:
    """Parameters, MACs and per-stage feature shapes of ``name`` for one image of ``img_size``."""
    model = create_model(name, num_classes=num_classes).eval()
    backbone = create_model(name, features_only=True).eval()
    backbone.load_state_dict({k: v for k, v in model.state_dict().items() if k in backbone.state_dict()})
    x = torch.zeros(1, model.config.in_chans, *img_size)
    with torch.no_grad():
        features = backbone(x)
        logits = model(x)
    stages = [
        {"stage": info["module"], "stride": info["reduction"], "shape": list(f.shape)}
        for info, f in zip(backbone.feature_info, features, strict=True)
    ]
    return {
        "model": name,
        "img_size": list(img_size),
        "params": count_params(model),
        "macs": count_macs(model, x),
        "stages": stages,
        "logits_shape": list(logits.shape),
    }
