"""CoreML export: an ML Program (``.mlpackage``) with an RGB image input, as Apple's ml-cvnets converted
MobileViT, validated here and run only on macOS, where the CoreML runtime exists.

coremltools converts from ``torch.export`` (its TorchScript frontend cannot follow the size arithmetic
of a trace) to the iOS 15 / macOS 12 opset; it splits the rank-6 patch reshapes of the MobileViT blocks
into ops of rank <= 5, Core ML's limit.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from mobilevit.errors import require_extra

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp16", "fp32")


def require_coreml() -> None:
    """Raise an ImportError with the install hint when the ``coreml`` extra is missing."""
    require_extra("coreml", "CoreML export", "coremltools")


def can_run_coreml() -> bool:
    """CoreML predictions need the macOS framework; elsewhere a model can only be converted and inspected."""
    return sys.platform == "darwin"


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
    without any conversion. ``precision`` is the compute precision; the logits are returned as fp32.
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
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        minimum_deployment_target=ct.target.iOS15,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel.save(str(path))
    return path


def validate_coreml(path: str | os.PathLike, input_shape: tuple[int, ...], num_classes: int) -> str:
    """Load the saved spec and check its input and output; return a one-line description of them."""
    require_coreml()
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise ValueError(f"{path} is not an ML Program")
    (inp,) = spec.description.input
    (out,) = spec.description.output
    height, width = input_shape[-2:]
    image = inp.type.imageType
    got_in = (inp.name, image.height, image.width)
    got_out = (out.name, tuple(out.type.multiArrayType.shape))
    want_in, want_out = (INPUT_NAME, height, width), (OUTPUT_NAME, (input_shape[0], num_classes))
    if got_in != want_in or got_out != want_out:
        raise ValueError(f"{path}: input/output {got_in}, {got_out} differ from the expected {want_in}, {want_out}")
    return f"input {INPUT_NAME!r} RGB image {height}x{width}, output {OUTPUT_NAME!r} {list(want_out[1])}"


def run_coreml(path: str | os.PathLike, x: torch.Tensor) -> torch.Tensor:
    """Logits of the CoreML model for the batch ``x`` in [0, 1] (macOS only), one image at a time."""
    require_coreml()
    import coremltools as ct

    mlmodel = ct.models.MLModel(str(path))
    logits = []
    for image in x:
        pixels = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        logits.append(torch.from_numpy(mlmodel.predict({INPUT_NAME: Image.fromarray(pixels)})[OUTPUT_NAME]))
    return torch.cat(logits)
