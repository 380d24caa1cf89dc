"""CoreML export: an ML Program (``.mlpackage``) with an RGB image input, as Apple's ml-cvnets converted
MobileViT, validated here and run only on macOS, where the CoreML runtime exists.

Every task exports: a classifier's ``logits`` [1, K], a segmenter's ``logits`` [1, K, H, W], a
detector's ``boxes`` and ``scores`` of every anchor (NMS runs after the file, as for the other formats).
coremltools converts from ``torch.export`` (its TorchScript frontend cannot follow the size arithmetic
of a trace) to the iOS 15 / macOS 12 opset; it splits the rank-6 patch reshapes of the MobileViT blocks
into ops of rank <= 5, Core ML's limit. Off macOS the saved spec is all there is to check: its input,
outputs, precision and op types (:func:`validate_coreml`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from mobilevit.errors import require_extra

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp16", "fp32")
MAX_RANK = 5  # Core ML's limit on a tensor's rank
# The ops whose outputs carry the compute precision: fp16 ML Programs keep the image scaling and the
# casts at either end in fp32, but every convolution and matrix product computes in the chosen precision.
COMPUTE_OPS = frozenset({"conv", "linear", "matmul"})
# The MIL ops that every MobileViT family and task head converts to with coremltools 9. Another op
# means the converter lowered something differently (a new coremltools version, a new layer), worth a
# look before the file ships: validation names it.
EXPECTED_OPS = frozenset({
    "conv", "linear", "matmul", "layer_norm", "relu", "silu", "softmax", "upsample_bilinear",
    "batch_norm", "real_div", "reduce_sum", "sqrt", "square",  # v2's GroupNorm(1)
    "exp", "clip",  # the detector's box decoding
    "add", "sub", "mul", "reduce_mean",
    "reshape", "transpose", "split", "slice_by_index", "squeeze", "stack", "concat",
    "const", "cast",  # weights and constants; casts at the ends of an fp16 program
})  # fmt: skip


def require_coreml() -> None:
    """Raise an ImportError with the install hint when the ``coreml`` extra is missing."""
    require_extra("coreml", "CoreML export", "coremltools")


def can_run_coreml() -> bool:
    """CoreML predictions need the macOS framework; elsewhere a model can only be converted and inspected."""
    return sys.platform == "darwin"


def output_names(model: nn.Module) -> tuple[str, ...]:
    """``logits``, or the names of a module with several outputs (a detector's ``boxes`` and ``scores``)."""
    return tuple(getattr(model, "output_names", (OUTPUT_NAME,)))


def export_coreml(
    model: nn.Module,
    path: str | os.PathLike,
    example: torch.Tensor,
    *,
    precision: str = "fp16",
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> Path:
    """Convert ``model`` at the fixed input shape of ``example`` and save it as an ``.mlpackage``.

    The input is an 8-bit RGB image mapped to ``(pixel / 255 - mean) / std``, the model's own
    preprocessing (mean 0, std 1 for MobileViT: scale 1/255, bias 0), so apps pass a CVPixelBuffer
    without any conversion. ``precision`` is the compute precision; the outputs (:func:`output_names`)
    are returned as fp32.
    """
    require_coreml()
    import coremltools as ct

    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ValueError(f"a CoreML ML Program is saved as a .mlpackage folder, got {path}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown CoreML precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if len(set(std)) != 1:
        raise ValueError(f"a CoreML image input has one scale for all channels, but the model's std is {std}")
    scale = 1.0 / (255.0 * std[0])
    image = ct.ImageType(
        name=INPUT_NAME,
        shape=tuple(example.shape),
        scale=scale,
        bias=[-m / std[0] for m in mean],
        color_layout=ct.colorlayout.RGB,
    )
    program = torch.export.export(model.eval(), (example,)).run_decompositions({})
    mlmodel = ct.convert(
        program,
        inputs=[image],
        outputs=[ct.TensorType(name=name, dtype=np.float32) for name in output_names(model)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS15,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def validate_coreml(
    path: str | os.PathLike, input_shape: Sequence[int], outputs: Mapping[str, Sequence[int]], precision: str
) -> str:
    """Check the saved spec against what the export asked for, and return a one-line description.

    ``input_shape`` is the example's [1, 3, H, W]; ``outputs`` maps each output name, in order, to the
    shape of the PyTorch model's output on that example. Checked: an RGB image input of that size, the
    fp32 outputs with those names and shapes, ``precision`` in the dtypes of the :data:`COMPUTE_OPS`
    (and no fp16 tensor at all in fp32), no tensor above rank 5, convolutions present and no op
    outside :data:`EXPECTED_OPS`. Raises ValueError naming what differs.
    """
    require_coreml()
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} is not an ML Program")
    _check_interface(spec, path, tuple(input_shape), {k: tuple(v) for k, v in outputs.items()})
    ops = program_ops(spec)
    _check_precision(ops, path, precision)
    _check_ops(ops, path)
    height, width = input_shape[-2:]
    shown = ", ".join(f"{name!r} {list(shape)}" for name, shape in outputs.items())
    types = sorted({op.type for op in ops} - {"const"})
    compute = sum(op.type in COMPUTE_OPS for op in ops)
    return (
        f"input {INPUT_NAME!r} RGB image {height}x{width}, output{'s' if len(outputs) > 1 else ''} {shown}; "
        f"{precision} compute ({compute} conv/linear/matmul ops); {len(types)} op types: {', '.join(types)}"
    )


def program_ops(spec: Any) -> list[Any]:
    """The operations of an ML Program's main function (one block: the export has one input shape)."""
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    return list(block.operations)


def tensor_types(op: Any) -> list[Any]:
    """The tensor types of an op's outputs (an op may also output lists or tuples)."""
    return [out.type.tensorType for out in op.outputs if out.type.HasField("tensorType")]


def _check_interface(
    spec: Any, path: str | os.PathLike, input_shape: tuple[int, ...], outputs: Mapping[str, tuple[int, ...]]
) -> None:
    """The description's input (one RGB image of the example's size) and outputs (names, shapes, fp32)."""
    from coremltools.proto import FeatureTypes_pb2

    inputs = [(i.name, i.type.WhichOneof("Type")) for i in spec.description.input]
    if inputs != [(INPUT_NAME, "imageType")]:
        raise ValueError(f"{path}: inputs {inputs}, expected one image input {INPUT_NAME!r}")
    image = spec.description.input[0].type.imageType
    got_in = (image.height, image.width, FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace))
    want_in = (*input_shape[-2:], "RGB")
    (function_input,) = spec.mlProgram.functions["main"].inputs
    tensor_shape = tuple(d.constant.size for d in function_input.type.tensorType.dimensions)
    if got_in != want_in or tensor_shape != input_shape:
        raise ValueError(
            f"{path}: input image {got_in} of a {list(tensor_shape)} tensor, expected {want_in} of {list(input_shape)}"
        )
    got_out = {o.name: tuple(o.type.multiArrayType.shape) for o in spec.description.output}
    if list(got_out.items()) != list(outputs.items()):
        raise ValueError(f"{path}: outputs {got_out} differ from the PyTorch model's {dict(outputs)}")
    fp32 = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Value("FLOAT32")
    wrong = [o.name for o in spec.description.output if o.type.multiArrayType.dataType != fp32]
    if wrong:
        raise ValueError(f"{path}: outputs {wrong} are not fp32")


def _check_precision(ops: list[Any], path: str | os.PathLike, precision: str) -> None:
    """fp16: every convolution and matrix product computes in fp16; fp32: no tensor is fp16."""
    from coremltools.proto import MIL_pb2

    fp16 = MIL_pb2.DataType.Value("FLOAT16")
    want = fp16 if precision == "fp16" else MIL_pb2.DataType.Value("FLOAT32")
    computed = {MIL_pb2.DataType.Name(t.dataType) for op in ops if op.type in COMPUTE_OPS for t in tensor_types(op)}
    if computed != {MIL_pb2.DataType.Name(want)}:
        raise ValueError(f"{path}: conv/linear/matmul outputs are {sorted(computed)}, expected {precision}")
    halves = sorted({op.type for op in ops for t in tensor_types(op) if t.dataType == fp16})
    if precision == "fp32" and halves:
        raise ValueError(f"{path}: an fp32 program has fp16 tensors (from {', '.join(halves)})")


def _check_ops(ops: list[Any], path: str | os.PathLike) -> None:
    """Convolutions present, nothing outside :data:`EXPECTED_OPS`, no tensor above Core ML's rank 5."""
    types = {op.type for op in ops}
    if "conv" not in types:
        raise ValueError(f"{path}: the program has no conv op ({', '.join(sorted(types))})")
    unexpected = sorted(types - EXPECTED_OPS)
    if unexpected:
        raise ValueError(
            f"{path}: unexpected ops {', '.join(unexpected)}; the MobileViT models convert to "
            f"{', '.join(sorted(EXPECTED_OPS))}. Please report this with the model name and coremltools version"
        )
    rank = max((t.rank for op in ops for t in tensor_types(op)), default=0)
    if rank > MAX_RANK:
        raise ValueError(f"{path}: a tensor of rank {rank}; Core ML allows at most {MAX_RANK}")


def run_coreml(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """The CoreML model's outputs for the batch ``x`` in [0, 1] (macOS only), one image at a time: the
    logits, or a tuple in the order of the spec's outputs (a detector's boxes and scores)."""
    require_coreml()
    import coremltools as ct

    mlmodel = ct.models.MLModel(str(path))
    names = [o.name for o in mlmodel.get_spec().description.output]
    predictions = []
    for image in x:
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        predictions.append(mlmodel.predict({INPUT_NAME: Image.fromarray(pixels)}))
    outputs = tuple(torch.cat([torch.from_numpy(p[name]) for p in predictions]) for name in names)
    return outputs[0] if len(outputs) == 1 else outputs
