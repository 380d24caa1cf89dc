"""What differs between classification, segmentation and detection training: the data, the batch
layout, the loss and the evaluation. The :class:`~mobilevit.engine.train.Trainer` does the rest
(sampler, optimizer, EMA, checkpoints, DDP) the same way for all three.

Every training dataset is indexed by the multi-scale sampler's ``(height, width, index)`` and every
collate function returns ``(images [B, 3, h, w], targets, skipped)``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mobilevit.data import datasets as cls_data
from mobilevit.data import detection as det_data
from mobilevit.data import segmentation as seg_data
from mobilevit.data.synthetic import make_shapes
from mobilevit.data.transforms import MultiScaleDataset, TransformedDataset, collate_skipping, eval_transform
from mobilevit.engine.evaluate import evaluate
from mobilevit.engine.metrics import DetectionMetrics, SegmentationMetrics

SHAPES = "shapes"  # the built-in segmentation and detection data: synthetic shapes made on first use
Dataset = torch.utils.data.Dataset


SHAPES_SPLITS = (512, 128)  # training and validation images of the built-in shapes data, 128x128


def shapes_root() -> Path:
    """The synthetic shapes dataset in the cache, written once (a few seconds)."""
    root = cls_data.cache_dir() / f"{SHAPES}-{SHAPES_SPLITS[0]}-{SHAPES_SPLITS[1]}"
    if root.exists():
        return root
    # Written aside, then renamed: a killed run or a second process (DDP ranks) never sees half of it.
    partial = root.with_name(f".{root.name}.{os.getpid()}")
    make_shapes(partial, *SHAPES_SPLITS)
    try:
        partial.rename(root)
    except OSError:  # another process finished first
        shutil.rmtree(partial)
    return root


def _data_root(data: str) -> Path:
    return shapes_root() if data == SHAPES else Path(data)


def to_device(targets: Any, device: torch.device) -> Any:
    """Tensors, or lists of target dicts (detection), moved to ``device``."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device)
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


@dataclass(frozen=True)
class Task:
    """One task's data, loss and metrics. ``metrics`` are logged per epoch as ``val_<name>``; the
    first is the headline figure."""

    name: str
    default_data: str
    metrics: tuple[str, ...]
    collate: Callable[[list], tuple[torch.Tensor, Any, int]]

    def dataset(self, data: str, split: str) -> Dataset:
        """The ``split`` ("train" or "val") of ``data``; its ``classes`` attribute names the classes."""
        raise NotImplementedError

    def datasets(self, data: str, splits: tuple[str, str] = ("train", "val")) -> tuple[Dataset, Dataset, list[str]]:
        train = self.dataset(data, splits[0])
        return train, self.dataset(data, splits[1]), list(train.classes)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        raise NotImplementedError

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        raise NotImplementedError

    def model_options(self, cfg: Any) -> dict[str, Any]:
        """Options of ``create_model`` that the training config decides."""
        return {}

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError


class Classification(Task):
    def dataset(self, data: str, split: str) -> Dataset:
        if data == cls_data.FASHION_MNIST:
            return cls_data.fashion_mnist(train=split == "train")
        return cls_data.image_folder(data, split)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        return MultiScaleDataset(dataset, cfg.crop_scale, cfg.strict, cfg.random_erasing)

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        return TransformedDataset(dataset, eval_transform(img_size))

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        return F.cross_entropy(model(images), targets, label_smoothing=label_smoothing)

    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        return evaluate(model, loader, num_classes, device)


class Segmentation(Task):
    def dataset(self, data: str, split: str) -> Dataset:
        return seg_data.voc_segmentation(_data_root(data), split)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        return seg_data.SegmentationDataset(dataset, num_classes, cfg.scale_range, cfg.strict)

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        return seg_data.SegmentationEvalDataset(dataset, (img_size, img_size), num_classes)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        logits = model(images)  # [B, K, h, w]
        if not (targets != seg_data.IGNORE_INDEX).any():  # every pixel ignored: no signal, not a NaN
            return logits.sum() * 0.0
        return F.cross_entropy(logits, targets, ignore_index=seg_data.IGNORE_INDEX, label_smoothing=label_smoothing)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        model.eval()
        metrics = SegmentationMetrics(num_classes)
        loss_sum, pixels = 0.0, 0
        for images, masks, _ in loader:
            images, masks = images.to(device), masks.to(device)
            logits = model(images).float()
            counted = int((masks != seg_data.IGNORE_INDEX).sum())
            if counted:
                loss = F.cross_entropy(logits, masks, ignore_index=seg_data.IGNORE_INDEX, reduction="sum")
                loss_sum, pixels = loss_sum + loss.item(), pixels + counted
            metrics.update(logits, masks)
        return {**metrics.compute(), "loss": loss_sum / max(pixels, 1)}


class Detection(Task):
    def dataset(self, data: str, split: str) -> Dataset:
        return det_data.detection_dataset(_data_root(data), split)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        return det_data.DetectionDataset(dataset, cfg.ssd_augment, cfg.strict)

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        return det_data.DetectionEvalDataset(dataset, (img_size, img_size))

    def model_options(self, cfg: Any) -> dict[str, Any]:
        return {"img_size": cfg.img_size}

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        # COCO's crowd regions are neither objects to match nor background: left out of training,
        # as torchvision's detection references do; the metric ignores detections on them.
        targets = [{"boxes": t["boxes"][t["iscrowd"] == 0], "labels": t["labels"][t["iscrowd"] == 0]} for t in targets]
        losses = model(list(images), targets)  # {"bbox_regression", "classification"}
        return sum(losses.values())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        model.eval()
        metrics = DetectionMetrics()
        for images, targets, _ in loader:
            predictions = model(list(images.to(device)))
            metrics.update([{k: v.cpu() for k, v in p.items()} for p in predictions], targets)
        return metrics.compute()


TASKS: dict[str, Task] = {
    "classification": Classification(
        "classification", cls_data.FASHION_MNIST, ("top1", "top5", "loss"), collate_skipping
    ),
    "segmentation": Segmentation("segmentation", SHAPES, ("miou", "pixel_acc", "loss"), seg_data.collate_segmentation),
    "detection": Detection("detection", SHAPES, ("map_50", "map"), det_data.collate_detection),
}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return TASKS[name]
