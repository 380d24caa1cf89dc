"""Deployment exports (ONNX, TorchScript, ExecuTorch, CoreML, LiteRT), each checked against PyTorch afterwards.

Every format except CoreML is run with its own runtime on structured images and compared with the
PyTorch model: an fp32 export that differs by more than 1e-4 is an error, since then the file does not
compute what the model computes. fp16 exports (onnx, litert) are held to 5% of the largest output instead
(``FP16_TOLERANCE``) on 8 images and report their top-1 agreement. int8 exports are compared by top-1
agreement with fp32 on the calibration images instead. CoreML predictions need macOS, where they are
compared for information; elsewhere only the saved spec is checked (input, outputs, precision, op types).
"""

from __future__ import annotations

import copy
import os
import statistics
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from mobilevit.data.synthetic import structured_images
from mobilevit.export.bench import time_interleaved
from mobilevit.export.coreml import can_run_coreml, export_coreml, output_names, run_coreml, validate_coreml
from mobilevit.export.executorch import export_executorch, run_executorch
from mobilevit.export.litert import LiteRTRunner, export_litert
from mobilevit.export.onnx import (
    DYNAMIC_MIN_BATCH,
    DYNAMIC_MIN_SIDE,
    OnnxRunner,
    export_onnx,
    int8_speed_note,
    quantize_onnx,
)
from mobilevit.export.torchscript import TorchScriptRunner, export_torchscript
from mobilevit.tasks import task_for

FORMATS = ("onnx", "torchscript", "executorch", "coreml", "litert")
INT8_FORMATS = ("onnx", "executorch", "litert")
DYNAMIC_FORMATS = ("onnx", "torchscript")
PRECISIONS = ("fp32", "fp16")
FP16_FORMATS = ("onnx", "coreml", "litert")
DEFAULT_PRECISION = {"coreml": "fp16"}  # the others: fp32
FP32_TOLERANCE = 1e-4
# fp16 exports: the largest difference may be this share of the largest PyTorch output (at least 1),
# since fp16 rounding error grows with the values (11 significant bits: 5e-4 of each weight and activation,
# accumulated over the layers). Measured on randomised models, 8 structured images: at most 0.037 of the
# largest logit (mobilevitv2_050, 1000 classes, 256x256, ONNX), 0.01 for the other classifiers, 0.018 for
# segmentation logits; a wrong op or an fp16 overflow is off by far more. Top-1 is then the same on every
# image whose two best logits are further apart than twice the difference: it is reported, not required,
# since near-ties (frequent among 1000 random logits) may swap without any fault in the file.
FP16_TOLERANCE = 5e-2
FP16_CHECK_IMAGES = 8
FP16_ONNX_NOTE = (
    "fp16 weights and activations, float32 input and outputs; ONNX Runtime's CPU provider runs the ops it has "
    "no fp16 kernel for in fp32, casting around them (GPU providers compute in fp16)"
)
FP16_LITERT_NOTE = (
    "fp16 weights, float32 activations: the CPU interpreter (XNNPACK) turns the weights into fp32 when it loads "
    "the file, the GPU delegate can compute in fp16"
)

Runner = Callable[[torch.Tensor], torch.Tensor | tuple[torch.Tensor, ...]]


class ExportCheckError(ValueError):
    """The exported file's outputs differ from the PyTorch model's by more than the tolerance."""


@dataclass
class ExportReport:
    """What was written and how well it matches PyTorch.

    ``max_abs_diff`` is the largest logit difference on the check images (None when the format cannot
    run here) and ``tolerance`` the bound it was held to (None where it is informational: int8, CoreML);
    ``top1_agreement`` is, for int8, the share of calibration images whose top-1 class is the fp32
    model's, for fp16 the share of check images (of pixels, for segmentation) whose top-1 class is
    PyTorch's. ``size_mb`` is the file's size in MB (10^6 bytes; a CoreML package's files together).
    """

    path: Path
    format: str
    max_abs_diff: float | None
    top1_agreement: float | None = None
    notes: list[str] = field(default_factory=list)
    tolerance: float | None = None
    size_mb: float | None = None


def export(
    model: nn.Module,
    fmt: str,
    path: str | os.PathLike,
    *,
    img_size: tuple[int, int] = (256, 256),
    dynamic: bool = False,
    int8: bool = False,
    calibration: torch.Tensor | None = None,
    opset: int = 17,
    precision: str | None = None,
) -> ExportReport:
    """Export a model to ``fmt`` at ``path`` for inputs [1, 3, *img_size], then check the file.

    Classifiers and segmentation models export whole (logits [B, K] or [B, K, H, W]). A detector
    exports up to the boxes and class probabilities of every anchor, at its own ``img_size``
    (:class:`~mobilevit.models.detection.SSDRawPredictions`): NMS is not in the file but runs after
    it, in :func:`mobilevit.models.detection.postprocess`. Each task's ``export_formats`` lists its formats.

    ``dynamic`` (onnx, torchscript) makes batch, height and width free; the check then also runs at
    another batch size and input size. ``int8`` (onnx, executorch, litert) quantizes with static calibration on
    ``calibration`` [N, 3, *img_size], preprocessed like real inputs (see
    :func:`mobilevit.data.calibration.calibration_images`). ``opset`` is ONNX's. ``precision`` is
    "fp32" or "fp16" for every format that has it (see :func:`resolve_precision`); None is the format's
    own: fp16 for CoreML, fp32 for the others. fp16 (onnx, litert, coreml; classifiers and segmentation
    models) halves the file. The model is copied, never modified. Raises :class:`ExportCheckError` when an fp32
    export differs from PyTorch by more than 1e-4, an fp16 one by more than ``FP16_TOLERANCE`` of the largest
    output (the file is kept for inspection).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_task(model, fmt, img_size, dynamic, int8, precision)
    precision = resolve_precision(fmt, precision, int8)
    if int8 and fmt not in INT8_FORMATS:
        raise ValueError(f"int8 is not supported for {fmt}, use one of {', '.join(INT8_FORMATS)}")
    if dynamic and fmt not in DYNAMIC_FORMATS:
        raise ValueError(f"dynamic shapes are not supported for {fmt} (its programs have a fixed input shape)")
    height, width = img_size
    if int8:
        if calibration is None:
            raise ValueError("int8 export needs calibration images (static quantization measures activation ranges)")
        if tuple(calibration.shape[-2:]) != (height, width):
            raise ValueError(f"calibration images are {tuple(calibration.shape[-2:])}, the export is {img_size}")
    task = task_for(model)
    notes = task.export_notes(model)
    original = copy.deepcopy(model).eval()
    model = task.deployable(original)
    path = Path(path)
    fp16 = precision == "fp16" and fmt != "coreml"  # CoreML's check stays informational
    checks = [structured_images(1, height, width, seed=1)]
    if fp16:
        checks = list(structured_images(FP16_CHECK_IMAGES, height, width, seed=1).split(1))
    if dynamic:
        checks.append(structured_images(3, height + 32, width + 64, seed=2))
    with torch.no_grad():
        run = _export(model, fmt, path, img_size, dynamic, int8, calibration, opset, precision, notes)
        size_mb = file_size_mb(path)
        if run is None:
            return ExportReport(path, fmt, None, notes=notes, size_mb=size_mb)
        if fmt == "coreml":  # its image input has 8 bits per channel
            checks = [(x * 255).round() / 255 for x in checks]
        pairs = [(task.comparable(run(x), original), task.comparable(model(x), original)) for x in checks]
        diff = max(max_abs_diff(exported, expected) for exported, expected in pairs)
        if int8:
            agree = sum(run(x).argmax(1).item() == model(x).argmax(1).item() for x in calibration.split(1))
            top1 = agree / len(calibration)
            return ExportReport(path, fmt, diff, top1_agreement=top1, notes=notes, size_mb=size_mb)
    if fmt == "coreml":
        return ExportReport(path, fmt, diff, notes=notes, size_mb=size_mb)
    scale = max(1.0, max(max_abs(expected) for _, expected in pairs)) if fp16 else None
    tolerance = FP16_TOLERANCE * scale if fp16 else FP32_TOLERANCE
    if diff > tolerance:
        shapes = ", ".join(dict.fromkeys(str(tuple(x.shape)) for x in checks))
        bound = f" ({FP16_TOLERANCE:g} of the largest PyTorch output, {scale:.3g})" if fp16 else ""
        raise ExportCheckError(
            f"{path} ({fmt}, {precision}) does not match PyTorch: max abs difference {diff:.3g} > {tolerance:.3g}"
            f"{bound} on inputs {shapes}. The file is kept for inspection; please report this with the model name "
            "and options."
        )
    top1 = top1_agreement(pairs) if fp16 else None
    return ExportReport(path, fmt, diff, top1_agreement=top1, notes=notes, tolerance=tolerance, size_mb=size_mb)


def resolve_precision(fmt: str, precision: str | None, int8: bool) -> str:
    """The precision an export of ``fmt`` is written in: ``precision``, or the format's own for None
    (``DEFAULT_PRECISION``). ValueErrors for fp16 where the format has no fp16 file and for fp16 with
    int8 (two ways of making the file smaller: one replaces the other)."""
    if precision is None:
        return DEFAULT_PRECISION.get(fmt, "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp16" and int8:
        raise ValueError("fp16 and int8 cannot be combined: an int8 file is already smaller; choose one of them")
    if precision == "fp16" and fmt not in FP16_FORMATS:
        raise ValueError(f"fp16 is not supported for {fmt}; use one of {', '.join(FP16_FORMATS)}, or fp32")
    return precision


def check_task(
    model: nn.Module,
    fmt: str,
    img_size: tuple[int, int],
    dynamic: bool,
    int8: bool,
    precision: str | None = None,
) -> None:
    """ValueErrors for what a task model cannot be exported as: :func:`export` checks it first, and
    the CLI too, before it loads calibration images."""
    # CoreML's fp16 is its compute precision, run and compared only on macOS: every task has it
    fp16 = resolve_precision(fmt, precision, int8) == "fp16" and fmt != "coreml"
    task_for(model).check_export(model, fmt, img_size, dynamic, int8, fp16=fp16)


def max_abs_diff(a: torch.Tensor | Sequence[torch.Tensor], b: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """The largest element-wise difference of two outputs, each a tensor or a tuple of tensors."""
    pairs = zip(a, b, strict=True) if isinstance(a, (tuple, list)) else [(a, b)]
    return max((x - y).abs().max().item() for x, y in pairs)


def max_abs(outputs: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """The largest magnitude in an output, a tensor or a tuple of tensors."""
    tensors = outputs if isinstance(outputs, (tuple, list)) else [outputs]
    return max(t.abs().max().item() for t in tensors)


def top1_agreement(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The share of (exported, expected) logit pairs, [B, K] or per pixel [B, K, H, W], with the same top-1 class."""
    same = sum((exported.argmax(1) == expected.argmax(1)).sum().item() for exported, expected in pairs)
    return same / sum(expected.argmax(1).numel() for _, expected in pairs)


def file_size_mb(path: Path) -> float | None:
    """The size of the file at ``path`` in MB (10^6 bytes), or of the files in a folder (a CoreML
    package) together; None when nothing is there."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6
    return path.stat().st_size / 1e6 if path.is_file() else None


def _speedup(fp32: Runner, int8: Runner, example: torch.Tensor, rounds: int = 3, iters: int = 3) -> float:
    """fp32's median latency over int8's, interleaved on this machine (a few calls: an indication)."""
    times = time_interleaved({"fp32": fp32, "int8": int8}, example, rounds, iters)
    return statistics.median(times["fp32"]) / statistics.median(times["int8"])


def _export(
    model: nn.Module,
    fmt: str,
    path: Path,
    img_size: tuple[int, int],
    dynamic: bool,
    int8: bool,
    calibration: torch.Tensor | None,
    opset: int,
    precision: str,
    notes: list[str],
) -> Runner | None:
    """Write the file; return a function that runs it, or None where its runtime is unavailable."""
    example = structured_images(1, *img_size)
    fp16 = precision == "fp16"
    if fmt == "onnx":
        if dynamic:
            height, width = (max(s, DYNAMIC_MIN_SIDE) for s in img_size)
            example = structured_images(DYNAMIC_MIN_BATCH, height, width)
            notes.append("dynamic batch, height and width (any input of at least 32x32)")
        if int8:
            with tempfile.TemporaryDirectory() as tmp:
                fp32_path = export_onnx(model, Path(tmp) / "fp32.onnx", example, dynamic=dynamic, opset=opset)
                fp32 = OnnxRunner(fp32_path)
                # the graph that is quantized must compute the model: an export fault would pass for int8 error
                drift = max_abs_diff(fp32(example), model(example))
                if drift > FP32_TOLERANCE:
                    raise ExportCheckError(
                        f"the fp32 ONNX graph behind {path} differs from PyTorch by {drift:.3g} > {FP32_TOLERANCE:g}; "
                        "please report this with the model name and options"
                    )
                runner = OnnxRunner(quantize_onnx(fp32_path, path, calibration))
                notes.append(f"fp32 graph before quantization: max abs diff {drift:.3g} from PyTorch")
                notes.append(
                    f"int8 QDQ, 7-bit weights (the same results on every CPU), calibrated on {len(calibration)} images"
                )
                notes.append(int8_speed_note(_speedup(fp32, runner, example[:1])))
        else:
            runner = OnnxRunner(export_onnx(model, path, example, dynamic=dynamic, opset=opset, fp16=fp16))
            if fp16:
                notes.append(FP16_ONNX_NOTE)
        notes.append(f"opset {opset}")
        return runner
    if fmt == "torchscript":
        export_torchscript(model, path, example)
        sizes = "" if getattr(model, "fixed_input_size", False) else " and input size"
        notes.append(f"frozen trace; runs at any batch size{sizes}")
        return TorchScriptRunner(path)
    if fmt == "executorch":
        _, where = export_executorch(model, path, example, int8=int8, calibration=calibration)
        notes.append(f"XNNPACK, {'int8' if int8 else 'fp32'}, fixed input shape {tuple(example.shape)}")
        notes.append(str(where))
        return lambda x: run_executorch(path, x)
    if fmt == "litert":
        runner = LiteRTRunner(export_litert(model, path, example, calibration if int8 else None, fp16=fp16))
        batch, channels, height, width = example.shape
        layout = f"NHWC input [{batch}, {height}, {width}, {channels}]"
        if int8:
            scale, zero_point = runner.input["quantization"]
            notes.append(f"LiteRT int8, calibrated on {len(calibration)} images; {layout} int8, fixed shape")
            offset = f"{'+' if zero_point >= 0 else '-'} {abs(zero_point)}"
            notes.append(f"input int8 = round(RGB in [0, 1] / {scale:.6g}) {offset}; outputs int8 too")
        else:
            notes.append(f"LiteRT {precision}, {layout} RGB in [0, 1], fixed shape")
            if fp16:
                notes.append(FP16_LITERT_NOTE)
        notes.append(str(runner.placement()))
        return runner
    cfg = getattr(model, "pretrained_cfg", {})
    export_coreml(
        model, path, example, precision=precision, mean=cfg.get("mean", (0.0,) * 3), std=cfg.get("std", (1.0,) * 3)
    )
    outputs = model(example)
    shapes = [o.shape for o in (outputs if isinstance(outputs, tuple) else (outputs,))]
    expected = {name: tuple(shape) for name, shape in zip(output_names(model), shapes, strict=True)}
    notes.append(f"ML Program, {validate_coreml(path, tuple(example.shape), expected, precision)}")
    if not can_run_coreml():
        notes.append("not run: CoreML predictions need macOS; the saved spec was loaded and validated")
        return None
    notes.append(f"max abs diff is informational ({precision} compute, 8-bit image input)")
    return lambda x: run_coreml(path, x)
