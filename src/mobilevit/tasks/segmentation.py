"""Semantic segmentation: VOC-style masks or the built-in shapes, per-pixel cross-entropy, mIoU from a
confusion matrix (as VOC's devkit computes it), and mask and overlay PNGs."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from mobilevit.data import segmentation as seg_data
from mobilevit.data.images import WHOLE_IMAGE_INTERPOLATION, resized_input
from mobilevit.data.synthetic import SHAPES, data_root
from mobilevit.tasks.base import Dataset, Forward, Images, Task

IGNORE_INDEX = seg_data.IGNORE_INDEX
OVERLAY_ALPHA = 0.5  # weight of the class colour in a segmentation overlay
PALETTE = seg_data.VOC_PALETTE


class SegmentationMetrics:
    """Accumulates a ``num_classes`` x ``num_classes`` confusion matrix (rows: target, columns:
    prediction) over pixels whose target is not ``ignore_index``.

    The mIoU averages the IoU of the classes present in the target or the prediction; a class absent
    from both has no IoU (NaN in ``per_class_iou``) and is left out. ``confusion`` lives on the
    device of the updates, so ranks can all-reduce it before :meth:`compute`.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, output: torch.Tensor, masks: torch.Tensor) -> None:
        """``output``: logits ``[B, C, h, w]`` or predicted ids ``[B, h, w]``; ``masks``: ``[B, h, w]``."""
        preds = output.argmax(dim=1) if output.ndim == masks.ndim + 1 else output
        if preds.shape != masks.shape:
            raise ValueError(f"predictions {tuple(preds.shape)} and masks {tuple(masks.shape)} differ in shape")
        keep = masks != self.ignore_index
        target, preds = masks[keep].long(), preds[keep].long()
        if target.numel() and (target.min() < 0 or target.max() >= self.num_classes):
            unknown = sorted(set(target.unique().tolist()) - set(range(self.num_classes)))
            raise ValueError(
                f"masks hold ids {unknown} outside [0, {self.num_classes}) that are not the ignore index "
                f"{self.ignore_index}"
            )
        n = self.num_classes
        counts = torch.bincount(target * n + preds, minlength=n * n).reshape(n, n)
        self.confusion = self.confusion.to(counts.device) + counts

    def compute(self) -> dict[str, Any]:
        """``miou`` and ``pixel_acc`` (floats, NaN before any pixel) and ``per_class_iou`` (a list)."""
        confusion = self.confusion.double()
        hits = confusion.diag()
        union = confusion.sum(0) + confusion.sum(1) - hits
        iou = hits / union  # NaN where a class is in neither target nor prediction
        present = union > 0
        total = confusion.sum()
        return {
            "miou": iou[present].mean().item() if present.any() else math.nan,
            "pixel_acc": (hits.sum() / total).item() if total > 0 else math.nan,
            "per_class_iou": iou.tolist(),
        }


@torch.inference_mode()
def segment(image: Image.Image, forward: Forward, size: tuple[int, int]) -> torch.Tensor:
    """[H, W] int64 class ids at the image's own size: logits at the model's input ``size``,
    upsampled bilinearly to the image before the argmax (smoother than upsampling the mask)."""
    logits = forward(resized_input(image, size)[None])  # [1, K, h, w]
    logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
    return logits[0].argmax(dim=0)


def overlay(pixels: np.ndarray, ids: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``pixels`` [H, W, 3] uint8 blended with the palette colour of each pixel's class; class 0 (the
    background) keeps the photo's colours, so the objects stand out."""
    tinted = (1 - alpha) * pixels + alpha * PALETTE[ids]
    return np.where(ids[..., None] > 0, tinted, pixels).round().astype(np.uint8)


def write_segmentation(image: Image.Image, mask: torch.Tensor, prefix: Path, names: list[str]) -> dict[str, Any]:
    """Write ``<prefix>_mask.png`` (palette PNG of class ids) and ``<prefix>_overlay.png``; return their
    paths and the pixel fraction of each class present, largest first."""
    ids = mask.numpy().astype(np.uint8)
    mask_png, overlay_png = prefix.with_name(f"{prefix.name}_mask.png"), prefix.with_name(f"{prefix.name}_overlay.png")
    indexed = Image.fromarray(ids)
    indexed.putpalette(PALETTE.tobytes())  # "L" -> "P": the pixel values stay the class ids
    indexed.save(mask_png)
    Image.fromarray(overlay(np.asarray(image), ids)).save(overlay_png)
    counts = torch.bincount(mask.flatten(), minlength=len(names))
    present = [(i, n / mask.numel()) for i, n in enumerate(counts.tolist()) if n]
    classes = [{"label": names[i], "index": i, "fraction": f} for i, f in sorted(present, key=lambda c: -c[1])]
    return {"mask_png": str(mask_png), "overlay_png": str(overlay_png), "classes": classes}


class Segmentation(Task):
    name = "segmentation"
    default_data = SHAPES
    metrics = ("miou", "pixel_acc", "loss")
    export_formats = ("onnx", "torchscript", "executorch", "coreml", "litert")
    fp16_export = True
    known_classes: ClassVar[Mapping[int, Callable[[], list[str]]]] = {
        21: lambda: list(seg_data.VOC_CLASSES),
        150: lambda: list(seg_data.ADE20K_CLASSES),
    }

    def dataset(self, data: str, split: str) -> Dataset:
        return seg_data.voc_segmentation(data_root(data), split)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        return seg_data.SegmentationDataset(dataset, num_classes, cfg.scale_range, cfg.strict)

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        return seg_data.SegmentationEvalDataset(dataset, (img_size, img_size), num_classes)

    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
        return seg_data.collate_segmentation(batch)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        logits = model(images)  # [B, K, h, w]
        if not (targets != IGNORE_INDEX).any():  # every pixel ignored: no signal, not a NaN
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        model.eval()
        metrics = SegmentationMetrics(num_classes)
        loss_sum, pixels = 0.0, 0
        for images, masks, _ in loader:
            images, masks = images.to(device), masks.to(device)
            logits = model(images).float()
            counted = int((masks != IGNORE_INDEX).sum())
            if counted:
                loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX, reduction="sum")
                loss_sum, pixels = loss_sum + loss.item(), pixels + counted
            metrics.update(logits, masks)
        return {**metrics.compute(), "loss": loss_sum / max(pixels, 1)}

    def report(self, result: Mapping[str, Any], names: list[str], output_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """mIoU, pixel accuracy and the IoU of each class (null for a class in neither masks nor predictions)."""
        per_class = {n: (None if iou != iou else iou) for n, iou in zip(names, result["per_class_iou"], strict=True)}
        lines = [f"mIoU {100 * result['miou']:.2f}%  pixel accuracy {100 * result['pixel_acc']:.2f}%"]
        lines += [f"  {name:<24} {'-' if iou is None else f'{100 * iou:6.2f}%'}" for name, iou in per_class.items()]
        return {**{k: result[k] for k in self.metrics}, "per_class_iou": per_class}, lines

    def check_predict_options(self, model: nn.Module, **options: Any) -> None:
        if model.num_classes > len(PALETTE):
            raise ValueError(f"a mask PNG holds at most {len(PALETTE)} classes, the model has {model.num_classes}")

    def predict(
        self,
        images: Images,
        model: nn.Module,
        names: list[str],
        forward: Forward,
        output_dir: str | os.PathLike,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Segment every image and write ``<stem>_mask.png`` and ``<stem>_overlay.png`` (the photo,
        classes other than 0 tinted) to ``output_dir``: ``{image, mask_png, overlay_png, classes}``
        with the pixel fraction of each class present."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        _, height, width = model.pretrained_cfg["input_size"]
        results = []
        for path, stem, image in images:
            mask = segment(image, forward, (height, width))
            results.append({"image": path, **write_segmentation(image, mask, output_dir / stem, names)})
        return results

    def web_config(self, model: nn.Module, img_size: tuple[int, int]) -> dict[str, Any]:
        """:func:`resized_input`'s resize, and the colours and blend of :func:`overlay`."""
        return {
            "preprocess": {"resize": "whole", "interpolation": WHOLE_IMAGE_INTERPOLATION},
            "palette": seg_data.class_colours(model.num_classes),
            "overlay_alpha": OVERLAY_ALPHA,
        }

    def format(self, result: Mapping[str, Any]) -> str:
        """Where the PNGs are and the share of each class present."""
        lines = [result["image"], f"  mask:    {result['mask_png']}", f"  overlay: {result['overlay_png']}"]
        width = max((len(c["label"]) for c in result["classes"]), default=5)
        lines += [f"  {c['label']:<{width}}  {100 * c['fraction']:6.2f}%" for c in result["classes"]]
        return "\n".join(lines)
