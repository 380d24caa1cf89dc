"""ExecuTorch export: a ``.pte`` program lowered to the XNNPACK delegate (fp32, or int8 by static
post-training quantization), and a runner on the ExecuTorch Python runtime.

Shapes are static: a program runs at the input shape it was exported with (MobileViT's resize of
odd-sized feature maps is then decided once, at export). The model is exported in XNNPACK's own ops
(:func:`mobilevit.export.xnnpack.for_xnnpack`), so the whole program is one XNNPACK partition and nothing
runs on ExecuTorch's portable kernels, its slow reference implementations; :class:`Placement` says where
each op went.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from mobilevit.checkpoint_io import atomic_write
from mobilevit.data.calibration import fixed_size_batches
from mobilevit.errors import require_extra
from mobilevit.export.xnnpack import Placement, for_xnnpack

# The delegate's outputs are read with getitem, which runs no kernel: not a fallback.
_NO_KERNEL = {"getitem"}


def _require_executorch() -> None:
    """Raise an ImportError with the install hint when the ``executorch`` extra is missing."""
    require_extra("executorch", "ExecuTorch export", "executorch.exir")


def quantize_int8(model: nn.Module, example: torch.Tensor, calibration: torch.Tensor) -> nn.Module:
    """Static int8 PTQ for XNNPACK (PT2E): per-channel symmetric weights, per-tensor activations whose
    ranges are observed on ``calibration`` (images preprocessed like the model's real inputs).

    The traced graph is specialised to the batch size of ``example``, so the calibration images are fed
    in batches of that size.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if calibration.shape[1:] != example.shape[1:]:
        shapes = f"{tuple(calibration.shape[1:])} vs {tuple(example.shape[1:])}"
        raise ValueError(f"calibration images must have the example's shape: {shapes}")
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (example,)).module(), quantizer)
    with torch.no_grad():
        for chunk in fixed_size_batches(calibration, example.shape[0]):
            prepared(chunk)
    return convert_pt2e(prepared)


def placement(lowered_module: torch.fx.GraphModule) -> Placement:
    """The :class:`Placement` of an edge program's graph after ``to_edge_transform_and_lower``."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(lowered_module)
    outside = Counter(
        {
            op.removeprefix("aten_"): breakdown.non_delegated
            for op, breakdown in info.delegation_by_operator.items()
            if breakdown.non_delegated and op not in _NO_KERNEL
        }
    )
    return Placement(info.num_delegated_subgraphs, info.num_delegated_nodes, dict(outside.most_common()))


def export_executorch(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    *,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    rewrite: bool = True,
) -> tuple[Path, Placement]:
    """Export ``model`` (a copy, in eval mode and XNNPACK's ops) to an ExecuTorch program at ``path`` for
    inputs of ``example``'s shape, delegated to XNNPACK; ``int8`` quantizes it first, calibrated on
    ``calibration`` [N, C, H, W]. The file is written atomically. Returns it and where its ops run.

    ``rewrite=False`` lowers the model as it is, ExecuTorch's standard recipe: how the benchmarks
    lower timm's model, the yardstick."""
    _require_executorch()
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if int8 and calibration is None:
        raise ValueError("int8 export needs calibration images: static quantization measures activation ranges")
    model = for_xnnpack(model) if rewrite else model.eval()
    with torch.no_grad():
        if int8:
            model = quantize_int8(model, example, calibration)
        exported = torch.export.export(model, (example,))
    lowered = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    where = placement(lowered.exported_program().graph_module)
    program = lowered.to_executorch()
    path = Path(path)
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(program.buffer))
    return path, where


class ExecuTorchRunner:
    """The ``forward`` method of a ``.pte`` program, loaded once, taking and returning torch tensors
    (a tuple of them for a program with several outputs)."""

    def __init__(self, path: str | os.PathLike) -> None:
        _require_executorch()
        from executorch.runtime import Runtime

        self.path = Path(path)
        self.program = Runtime.get().load_program(self.path)  # kept: the method runs inside it
        self.method = self.program.load_method("forward")
        self.input_shape = tuple(self.method.metadata.input_tensor_meta(0).sizes())

    def __call__(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if tuple(x.shape) != self.input_shape:
            raise ValueError(f"{self.path} was exported for inputs of shape {self.input_shape}, got {tuple(x.shape)}")
        outputs = tuple(self.method.execute([x.detach().cpu().float().contiguous()]))
        return outputs[0] if len(outputs) == 1 else outputs


def run_executorch(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Logits of the program at ``path`` for ``x`` of its exported shape (one-off; keep an
    :class:`ExecuTorchRunner` to reuse)."""
    return ExecuTorchRunner(path)(x)
