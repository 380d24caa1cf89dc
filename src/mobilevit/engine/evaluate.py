"""Classification metrics: top-1, top-5, loss, per-class accuracy and the confusion matrix."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, loader, num_classes: int, device: torch.device | str = "cpu") -> dict[str, Any]:
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
