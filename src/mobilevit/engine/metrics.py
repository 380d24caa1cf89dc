"""Segmentation and detection metrics: mIoU from a confusion matrix (as VOC's devkit computes
it), and COCO mAP through torchmetrics with the pycocotools backend, the reference implementation."""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any

import torch

from mobilevit.data.segmentation import IGNORE_INDEX


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


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor without a tv_tensors subclass, as torchmetrics expects."""
    return tensor.as_subclass(torch.Tensor).detach().cpu()


class DetectionMetrics:
    """COCO box mAP: torchmetrics' MeanAveragePrecision (XYXY boxes, pycocotools backend).

    ``update`` takes per image ``preds`` dicts (boxes, scores, labels) and ``targets`` dicts (boxes,
    labels and optionally iscrowd; other keys are ignored). ``compute`` returns plain floats: map,
    map_50, map_75, map_small, map_medium, map_large, mar_1, mar_10, mar_100 and mar_small,
    mar_medium, mar_large; -1.0 marks a value without ground truth to measure it (torchmetrics'
    convention, e.g. map_small when no object is small).
    """

    TARGET_KEYS = ("boxes", "labels", "iscrowd")
    PRED_KEYS = ("boxes", "scores", "labels")

    def __init__(self) -> None:
        try:
            from torchmetrics.detection import MeanAveragePrecision
        except ImportError as err:
            raise ImportError(
                "detection mAP needs torchmetrics and pycocotools: pip install torchmetrics pycocotools"
            ) from err
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")

    def reset(self) -> None:
        self.metric.reset()

    def update(self, preds: list[dict[str, torch.Tensor]], targets: list[dict[str, Any]]) -> None:
        self.metric.update(
            [{k: _plain(p[k]) for k in self.PRED_KEYS} for p in preds],
            [{k: _plain(t[k]) for k in self.TARGET_KEYS if k in t} for t in targets],
        )

    def compute(self) -> dict[str, float]:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress to stdout
            result = self.metric.compute()
        return {k: float(v) for k, v in result.items() if k != "classes" and not k.endswith("_per_class")}
