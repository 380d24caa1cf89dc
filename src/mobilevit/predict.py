"""Classify image files with a trained or published MobileViT: the engine of ``mobilevit predict``.

Images are preprocessed as the model's ``pretrained_cfg`` says (the same transform as evaluation), so
a checkpoint predicts on photos exactly as it was evaluated.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from mobilevit.data.transforms import pretrained_transform

BACKENDS = ("eager", "onnxruntime")
BATCH_SIZE = 32  # images per forward pass: bounds memory for long file lists


def load_model(path: str | os.PathLike, model_name: str | None = None) -> tuple[nn.Module, list[str]]:
    """The model in eval mode and its class names, from a ``save_pretrained`` / timm / Hugging Face
    directory, a training checkpoint ``step-N.pt`` (its EMA weights) or a weights file of any
    supported port (which needs ``model_name``)."""
    from mobilevit.engine.evaluate import load_for_eval

    model, names = load_for_eval(path, model_name)
    return model.eval(), class_names(model, names)


def class_names(model: nn.Module, names: Sequence[str] = ()) -> list[str]:
    """``names`` (or the checkpoint's ``label_names``) when they fit the classifier, ImageNet's classes
    for a 1000-class model, else ``class_<i>``: a prediction always has a readable label."""
    num_classes = model.num_classes
    names = list(names or model.pretrained_cfg.get("label_names") or ())
    if len(names) == num_classes:
        return names
    if num_classes == 1000:
        return imagenet_class_names()
    return [f"class_{i}" for i in range(num_classes)]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, from torchvision's weight metadata (nothing is downloaded)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path``, so that a truncated file fails here rather than later."""
    with Image.open(path) as image:
        image.load()  # leaving the block closes the file only: the decoded pixels stay
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB: grayscale is repeated, transparent pixels are laid on white (their stored
    colour is often arbitrary)."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, cfg: Mapping[str, Any]) -> torch.Tensor:
    """A [3, H, W] model input from ``image`` (any mode) as ``cfg`` (a ``pretrained_cfg``) describes."""
    return pretrained_transform(cfg)(to_rgb(image))


def top_k(logits: torch.Tensor, names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """The ``k`` most probable classes of each row of ``logits``: label, index and softmax probability."""
    probs, indices = logits.float().softmax(dim=1).topk(min(k, logits.shape[1]), dim=1)
    return [
        [{"label": names[i], "index": i, "prob": p} for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
        for row_p, row_i in zip(probs, indices, strict=True)
    ]


def _onnx_forward(model: nn.Module, directory: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """ONNX Runtime on the model exported with dynamic shapes, so one session serves every batch."""
    from mobilevit.export.onnx import DYNAMIC_MIN_BATCH, DYNAMIC_MIN_SIDE, OnnxRunner, export_onnx

    channels, height, width = model.pretrained_cfg["input_size"]
    example = torch.zeros(DYNAMIC_MIN_BATCH, channels, max(height, DYNAMIC_MIN_SIDE), max(width, DYNAMIC_MIN_SIDE))
    return OnnxRunner(export_onnx(model, directory / "model.onnx", example, dynamic=True))


def predict_files(
    paths: Sequence[str | os.PathLike],
    model: nn.Module,
    names: Sequence[str],
    *,
    k: int = 5,
    backend: str = "eager",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Top-``k`` predictions for every readable image, and an error for every other one: one bad
    file does not stop the rest. Returns ``(results, errors)`` of ``{image, predictions}`` and
    ``{image, error}``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    inputs, readable, errors = [], [], []
    for path in paths:
        try:
            inputs.append(preprocess(read_image(path), model.pretrained_cfg))
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            errors.append({"image": str(path), "error": f"cannot read {path}: {err}"})
            continue
        readable.append(str(path))
    if not inputs:
        return [], errors
    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        forward = model if backend == "eager" else _onnx_forward(model, Path(tmp))
        with torch.inference_mode():
            logits = torch.cat([forward(batch) for batch in torch.stack(inputs).split(BATCH_SIZE)])
    predictions = top_k(logits, names, k)
    return [{"image": p, "predictions": top} for p, top in zip(readable, predictions, strict=True)], errors


def format_table(result: Mapping[str, Any]) -> str:
    """One image's predictions as a small aligned table (rank, class, probability)."""
    width = max(5, *(len(p["label"]) for p in result["predictions"]))
    lines = [result["image"], f"  {'rank':>4}  {'class':<{width}}  {'prob':>7}"]
    lines += [
        f"  {rank:>4}  {p['label']:<{width}}  {100 * p['prob']:6.2f}%"
        for rank, p in enumerate(result["predictions"], start=1)
    ]
    return "\n".join(lines)
