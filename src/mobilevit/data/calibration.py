"""Calibration images for post-training quantization, preprocessed as the model sees them at evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS, default_loader

from mobilevit.data.classification import FASHION_MNIST, fashion_mnist
from mobilevit.data.transforms import eval_transform


def calibration_images(
    source: str,
    n: int,
    img_size: tuple[int, int],
    *,
    crop_pct: float = 0.9,
    interpolation: str = "bicubic",
) -> torch.Tensor:
    """``n`` images [n, 3, H, W] from ``source``: 'fashion-mnist' (its training split), an ImageFolder
    root (its ``train/`` split when there is one) or any folder of images, searched recursively.

    The images are spread evenly over the sorted files (so over the classes of an ImageFolder) and
    preprocessed with the evaluation transform: shorter side resized to size / crop_pct, centre crop.
    """
    if n <= 0:
        raise ValueError(f"the number of calibration images must be positive, got {n}")
    transform = eval_transform(tuple(img_size), crop_pct, interpolation)
    if source == FASHION_MNIST:
        dataset = fashion_mnist(train=True)
        return torch.stack([transform(dataset[i][0]) for i in _spread(len(dataset), n)])
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"calibration source {source} is neither '{FASHION_MNIST}' nor a folder of images")
    if (root / "train").is_dir():
        root = root / "train"
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {root}")
    return torch.stack([transform(default_loader(str(files[i]))) for i in _spread(len(files), n)])


def _spread(total: int, n: int) -> list[int]:
    """``min(n, total)`` indices evenly spaced over ``range(total)``."""
    n = min(n, total)
    return [i * total // n for i in range(n)]


def fixed_size_batches(images: torch.Tensor, batch: int) -> tuple[torch.Tensor, ...]:
    """``images`` in batches of exactly ``batch`` (the last one filled up by starting over), for
    graphs traced at one batch size; an empty ``images`` is an error, since nothing would be observed."""
    if not len(images):
        raise ValueError("int8 export needs at least one calibration image")
    padded = math.ceil(len(images) / batch) * batch
    return images[torch.arange(padded) % len(images)].split(batch)
