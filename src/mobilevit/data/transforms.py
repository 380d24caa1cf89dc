"""Training and evaluation transforms (torchvision transforms v2), and the dataset wrapper that
crops each sample to the size the multi-scale sampler chose for its batch."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torchvision.transforms import v2

from mobilevit.errors import UnreadableImageError

log = logging.getLogger(__name__)


def train_transform(
    height: int, width: int, scale: tuple[float, float] = (0.08, 1.0), erasing: float = 0.0
) -> v2.Compose:
    """The paper's augmentation: RandomResizedCrop and horizontal flip only; RGB in [0, 1]. With
    ``erasing`` > 0, also random erasing (Zhong et al. 2020) with that probability, filled with 0:
    an option for small datasets, off in the paper's recipe."""
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop((height, width), scale=scale, antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RGB(),  # after cropping: grayscale images are cropped once, then repeated
        v2.ToDtype(torch.float32, scale=True),
    ]
    if erasing > 0:
        steps.append(v2.RandomErasing(p=erasing, value=0))
    return v2.Compose(steps)


def shorter_side(size: int | tuple[int, int], crop_pct: float) -> int:
    """The side the shorter image side is resized to before the centre crop of ``size``: ``max(size) /
    crop_pct``, truncated. The web page (``mobilevit.export.web``) resizes to this same number."""
    return int((size if isinstance(size, int) else max(size)) / crop_pct)


def eval_transform(size: int | tuple[int, int], crop_pct: float = 0.9, interpolation: str = "bicubic") -> v2.Compose:
    """Resize the shorter side to ``max(size) / crop_pct``, centre-crop ``size`` (an int or (H, W));
    RGB in [0, 1]."""
    mode = v2.InterpolationMode(interpolation)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RGB(),
            v2.Resize(shorter_side(size, crop_pct), interpolation=mode, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def _flip_channels(image: torch.Tensor) -> torch.Tensor:
    return image.flip(-3)


def pretrained_transform(cfg: Mapping[str, Any]) -> v2.Compose:
    """The evaluation preprocessing that a model's ``pretrained_cfg`` describes: :func:`eval_transform`
    at its ``input_size``, then its channel order, then its ``mean`` / ``std`` (given per input channel
    of the model, so in its channel order). Images of any mode come out as 3-channel tensors."""
    _, height, width = cfg["input_size"]
    steps: list[Any] = [eval_transform((height, width), cfg.get("crop_pct", 0.9), cfg.get("interpolation", "bicubic"))]
    if cfg.get("channel_order", "RGB") == "BGR":
        steps.append(v2.Lambda(_flip_channels))
    mean, std = tuple(cfg.get("mean", (0.0,) * 3)), tuple(cfg.get("std", (1.0,) * 3))
    if mean != (0.0,) * 3 or std != (1.0,) * 3:
        steps.append(v2.Normalize(mean, std))
    return v2.Compose(steps)


class MultiScaleDataset(torch.utils.data.Dataset):
    """Indexed by the sampler's ``(height, width, index)``: returns the sample cropped to that size.

    An image that cannot be read is skipped (``None``; :func:`collate_skipping` drops it and counts
    it) unless ``strict``, which raises instead.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        scale: tuple[float, float] = (0.08, 1.0),
        strict: bool = False,
        erasing: float = 0.0,
    ):
        self.dataset = dataset
        self.scale = tuple(scale)
        self.strict = strict
        self.erasing = erasing

    @lru_cache(maxsize=32)  # noqa: B019 - a handful of sizes, one cache per dataset
    def _transform(self, height: int, width: int) -> v2.Compose:
        return train_transform(height, width, self.scale, self.erasing)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        height, width, index = key
        try:
            image, label = self.dataset[index]
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for broken files
            if self.strict:
                raise UnreadableImageError(
                    f"cannot read sample {index}: {err} (without --strict such files are skipped and counted)"
                ) from err
            log.warning("skipping unreadable sample %d: %s", index, err)
            return None
        return self._transform(height, width)(image), label


class TransformedDataset(torch.utils.data.Dataset):
    """A dataset with a fixed transform applied to its images (for evaluation)."""

    def __init__(self, dataset: torch.utils.data.Dataset, transform: v2.Compose):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return self.transform(image), label


def collate_skipping(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples; also return how many were skipped."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(batch)
    images = torch.stack([b[0] for b in kept])
    labels = torch.tensor([int(b[1]) for b in kept])
    return images, labels, len(batch) - len(kept)
