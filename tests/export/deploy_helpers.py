"""What the deployment tests share: an int8-friendly head, an ONNX graph's and a Core ML program's ranks."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def with_fitted_head(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Give each image its own class with a clear margin (least squares on the pooled features): a
    random head's top-1 hangs on margins smaller than any int8 error, a trained one's does not."""
    with torch.no_grad():
        features = model.forward_head(model.forward_features(images), pre_logits=True)
        mean, n = features.mean(0), len(images)
        weight = torch.linalg.lstsq(features - mean, 4 * (torch.eye(n) - 1 / n)).solution.T
        model.reset_classifier(n)
        model.head.fc.weight.copy_(weight)
        model.head.fc.bias.copy_(-weight @ mean)
    return model.eval()


def onnx_ops_and_ranks(path: Path) -> tuple[set[str], dict[str, int]]:
    """The op types of an ONNX graph and the rank of every node output (after shape inference)."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    typed = {v.name: v.type.tensor_type for v in [*graph.value_info, *graph.input, *graph.output]}
    ranks = {}
    for node in graph.node:
        for name in node.output:
            assert typed[name].HasField("shape"), f"{node.op_type} {name}: rank unknown"
            ranks[f"{node.op_type} {name}"] = len(typed[name].shape.dim)
    return {node.op_type for node in graph.node}, ranks


def coreml_max_rank(spec) -> int:
    """The largest tensor rank in a Core ML ML Program's main function (Core ML allows 5)."""
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    ranks = [
        out.type.tensorType.rank for op in block.operations for out in op.outputs if out.type.HasField("tensorType")
    ]
    assert ranks, "the program has no typed tensors"
    return max(ranks)
