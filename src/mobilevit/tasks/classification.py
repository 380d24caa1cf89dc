"""Image classification: Fashion-MNIST or an ImageFolder, cross-entropy, top-1/top-5 with per-class
accuracy and the confusion matrix, top-k predictions."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet50_Weights

from mobilevit.data import classification as classification_data
from mobilevit.data.images import preprocess
from mobilevit.data.memory import InMemoryEval, InMemoryMultiScale, image_tensor
from mobilevit.data.transforms import (
    MultiScaleDataset,
    TransformedDataset,
    collate_skipping,
    eval_transform,
    shorter_side,
)
from mobilevit.plots import plot_confusion
from mobilevit.tasks.base import Dataset, Forward, Images, Task

BATCH_SIZE = 32  # images per forward pass when predicting: bounds memory for long file lists
DEFAULT_TOP_K = 5  # classes shown per image


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, from torchvision's weight metadata (nothing is downloaded)."""
    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Top-1, top-5, mean loss, per-class accuracy and the confusion matrix (rows: true class)."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    loss_sum, top5_hits, count = 0.0, 0, 0
    for images, labels, *_ in loader:
        images, labels = images.to(device), labels.to(device)
        logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").item()
        k = min(5, num_classes)
        top5_hits += (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).sum().item()
        preds = logits.argmax(dim=1)
        confusion += torch.bincount((labels * num_classes + preds).cpu(), minlength=num_classes * num_classes).reshape(
            num_classes, num_classes
        )
        count += labels.numel()
    if count == 0:
        raise ValueError("the evaluation set is empty")
    per_class = (confusion.diag().float() / confusion.sum(dim=1).clamp(min=1).float()).tolist()
    return {
        "top1": confusion.diag().sum().item() / count,
        "top5": top5_hits / count,
        "loss": loss_sum / count,
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "count": count,
    }


def top_k(logits: torch.Tensor, names: list[str], k: int) -> list[list[dict[str, Any]]]:
    """The ``k`` most probable classes of each row of ``logits``: label, index and softmax probability."""
    probs, indices = logits.float().softmax(dim=1).topk(min(k, logits.shape[1]), dim=1)
    return [
        [{"label": names[i], "index": i, "prob": p} for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
        for row_p, row_i in zip(probs, indices, strict=True)
    ]


class Classification(Task):
    name = "classification"
    default_data = classification_data.FASHION_MNIST
    metrics = ("top1", "top5", "loss")
    export_formats = ("onnx", "torchscript", "executorch", "coreml", "litert")
    int8_export = True
    fp16_export = True
    predict_dynamic = True  # batches of any size through one exported file
    known_classes: ClassVar[Mapping[int, Callable[[], list[str]]]] = {1000: imagenet_class_names}
    first_class = None
    eval_needs = ("matplotlib",)  # confusion_matrix.png

    def dataset(self, data: str, split: str) -> Dataset:
        if data == classification_data.FASHION_MNIST:
            return classification_data.fashion_mnist(train=split == "train")
        return classification_data.image_folder(data, split)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        """Held in memory and augmented a batch at a time when the dataset is one array (Fashion-MNIST)."""
        held = image_tensor(dataset)
        if held is not None:
            return InMemoryMultiScale(*held, scale=cfg.crop_scale, erasing=cfg.random_erasing)
        return MultiScaleDataset(dataset, cfg.crop_scale, cfg.strict, cfg.random_erasing)

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        held = image_tensor(dataset)
        if held is not None:
            return InMemoryEval(*held, img_size)
        return TransformedDataset(dataset, eval_transform(img_size))

    def eval_dataset(self, dataset: Dataset, model: nn.Module, img_size: int) -> Dataset:
        """With the model's own crop and interpolation (published weights name theirs)."""
        cfg = model.pretrained_cfg
        return TransformedDataset(dataset, eval_transform(img_size, cfg["crop_pct"], cfg["interpolation"]))

    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
        return collate_skipping(batch)

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        return F.cross_entropy(model(images), targets, label_smoothing=label_smoothing)

    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        return evaluate(model, loader, num_classes, device)

    def report(self, result: Mapping[str, Any], names: list[str], output_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """Top-1/top-5/loss, per-class accuracy and the confusion-matrix PNG."""
        figure = plot_confusion(result["confusion"], names, Path(output_dir) / "confusion_matrix.png")
        per_class = dict(zip(names, result["per_class"], strict=True))
        lines = [
            f"{result['count']} images: top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  "
            f"loss {result['loss']:.4f}",
            *(f"  {name:<24} {100 * acc:6.2f}%" for name, acc in per_class.items()),
            f"confusion matrix: {figure}",
        ]
        summary = {k: result[k] for k in self.metrics}
        return {**summary, "per_class": per_class, "confusion_matrix_png": str(figure)}, lines

    def predict(
        self,
        images: Images,
        model: nn.Module,
        names: list[str],
        forward: Forward,
        output_dir: str | os.PathLike,
        *,
        k: int = DEFAULT_TOP_K,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """The top-``k`` classes of every image."""
        paths, inputs = [], []
        for path, _, image in images:
            paths.append(path)
            inputs.append(preprocess(image, model.pretrained_cfg))
        if not inputs:
            return []
        with torch.inference_mode():
            logits = torch.cat([forward(batch) for batch in torch.stack(inputs).split(BATCH_SIZE)])
        return [{"image": p, "predictions": top} for p, top in zip(paths, top_k(logits, names, k), strict=True)]

    def web_config(self, model: nn.Module, img_size: tuple[int, int]) -> dict[str, Any]:
        """:func:`preprocess`'s transform at the exported ``img_size``: the shorter side resized, then
        centre-cropped, in the model's channel order and normalisation; and :meth:`predict`'s ``k``."""
        cfg = model.pretrained_cfg
        preprocess = {
            "resize": "shorter_side",
            "shorter_side": shorter_side(img_size, cfg.get("crop_pct", 0.9)),
            "interpolation": cfg.get("interpolation", "bicubic"),
            "crop": list(img_size),
            "channel_order": cfg.get("channel_order", "RGB"),
            "mean": list(cfg.get("mean", (0.0,) * 3)),
            "std": list(cfg.get("std", (1.0,) * 3)),
        }
        return {"preprocess": preprocess, "top_k": min(DEFAULT_TOP_K, model.num_classes)}

    def format(self, result: Mapping[str, Any]) -> str:
        """Rank, class and probability, aligned."""
        width = max(5, *(len(p["label"]) for p in result["predictions"]))
        lines = [result["image"], f"  {'rank':>4}  {'class':<{width}}  {'prob':>7}"]
        lines += [
            f"  {rank:>4}  {p['label']:<{width}}  {100 * p['prob']:6.2f}%"
            for rank, p in enumerate(result["predictions"], start=1)
        ]
        return "\n".join(lines)
