"""What a model costs: parameters, multiply-accumulates and the shape of every stage's output."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mobilevit.models.factory import create_model, task_of


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


def _output_shape(model: nn.Module, x: torch.Tensor) -> list[int]:
    """The logits' shape; for a detector, [anchors, 4 + classes] of the raw head (before NMS)."""
    if task_of(model) != "detection":
        return list(model(x).shape)
    images, _ = model.transform([x[0]])
    head = model.head(list(model.backbone(images.tensors).values()))
    return [head["bbox_regression"].shape[1], 4 + head["cls_logits"].shape[2]]


def _features(model: nn.Module) -> nn.Module:
    """The backbone of any registered model as a features_only model with its own weights."""
    body = getattr(getattr(model, "backbone", None), "body", getattr(model, "backbone", model))
    stride = getattr(body, "output_stride", 32)
    options = {"output_stride": stride} if stride != 32 else {}  # dilated segmentation backbones
    backbone = create_model(body.model_name, features_only=True, **options).eval()
    own = body.state_dict()
    backbone.load_state_dict({k: v for k, v in own.items() if k in backbone.state_dict()})
    return backbone


def describe(name: str, img_size: tuple[int, int] | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Parameters, MACs, per-stage feature shapes and the output shape of ``name`` for one image of
    ``img_size`` (default: the model's own, 256, 512 or 320; the classes default to the task's
    dataset: 1000, 21 or 81)."""
    model = create_model(name, num_classes=num_classes).eval()
    img_size = tuple(img_size or model.pretrained_cfg["input_size"][1:])
    x = torch.zeros(1, model.config.in_chans, *img_size)
    is_detector = task_of(model) == "detection"
    backbone = _features(model)
    with torch.no_grad():
        features = backbone(x)
        output = _output_shape(model, x)
    stages = [
        {"stage": info["module"], "stride": info["reduction"], "shape": list(f.shape)}
        for info, f in zip(backbone.feature_info, features, strict=True)
    ]
    return {
        "model": name,
        "task": task_of(model),
        "img_size": list(img_size),
        "params": count_params(model),
        "macs": count_macs(model, [x[0]] if is_detector else x),
        "stages": stages,
        "output_shape": output,
        "output_name": "head" if is_detector else "logits",  # a detector's raw head, before NMS
    }
