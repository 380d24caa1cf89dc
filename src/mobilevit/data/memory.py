"""Small datasets held in memory as one uint8 tensor, augmented a whole batch at a time.

Fashion-MNIST (47 MB) decoded image by image through PIL and the v2 transforms costs about 0.2 ms per
image, and on a 2-core machine the DataLoader workers doing it take the core the training needs.
Held as one tensor, a batch of 128 is cropped and resized by a single ``torchvision.ops.roi_align``
call in the main process, and the validation set is transformed once, before the first epoch.

Only datasets that already hold their images as one array qualify (torchvision's MNIST family and
CIFAR: ``.data`` and ``.targets``); an ImageFolder is still read from its files by workers.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torchvision.ops import roi_align
from torchvision.transforms import v2

from mobilevit.data.transforms import eval_transform

MAX_BYTES = 1 << 30  # larger arrays stay on the file-by-file path, whatever their layout
RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect-ratio range
ATTEMPTS = 10  # as RandomResizedCrop: boxes drawn before falling back to the whole image


def image_tensor(dataset: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(images, labels)``: the dataset's images as uint8 ``(N, C, H, W)`` and its labels, or None
    when it does not hold them as one array (or holds more than :data:`MAX_BYTES`).

    A ``Subset`` of such a dataset (``--limit-train``) qualifies too."""
    indices = None
    if isinstance(dataset, torch.utils.data.Subset):
        indices, dataset = torch.as_tensor(list(dataset.indices)), dataset.dataset
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if data is None or targets is None or len(data) != len(targets):
        return None
    images = torch.as_tensor(data)
    if images.dtype != torch.uint8 or images.ndim not in (3, 4) or images.numel() > MAX_BYTES:
        return None
    if images.ndim == 3:  # (N, H, W): grayscale
        images = images.unsqueeze(1)
    elif images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):  # (N, H, W, C), as CIFAR
        images = images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(targets, dtype=torch.long)
    if indices is not None:
        images, labels = images[indices], labels[indices]
    return images.contiguous(), labels


def random_boxes(count: int, height: int, width: int, scale: tuple[float, float]) -> torch.Tensor:
    """``count`` RandomResizedCrop boxes ``(x1, y1, x2, y2)`` in pixels, drawn as torchvision's
    ``RandomResizedCrop.get_params`` draws them (area in ``scale``, log-uniform aspect ratio, up to
    :data:`ATTEMPTS` tries), all images at once; the global torch RNG drives them."""
    area = height * width
    target = area * torch.empty(count, ATTEMPTS).uniform_(*scale)
    log_ratio = torch.empty(count, ATTEMPTS).uniform_(math.log(RATIO[0]), math.log(RATIO[1]))
    ratio = torch.exp(log_ratio)
    w = torch.sqrt(target * ratio).round()
    h = torch.sqrt(target / ratio).round()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.float().argmax(dim=1)  # the first attempt that fits
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    none_fit = ~fits.any(dim=1)  # RandomResizedCrop's fallback: the whole image
    w, h = torch.where(none_fit, float(width), w), torch.where(none_fit, float(height), h)
    x1 = torch.floor(torch.rand(count) * (width - w + 1))
    y1 = torch.floor(torch.rand(count) * (height - h + 1))
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each image's box resized to ``size``, bilinear, as float in [0, 1]: ``(N, C, *size)``.

    ``roi_align`` with ``aligned=True`` samples at the same points as a bilinear resize of the crop;
    with an adaptive sampling ratio it averages several points per output pixel when shrinking."""
    rois = torch.cat([torch.arange(len(boxes), dtype=boxes.dtype)[:, None], boxes], dim=1)
    return roi_align(images.float(), rois, size, spatial_scale=1.0, sampling_ratio=-1, aligned=True) / 255


class InMemoryMultiScale(torch.utils.data.Dataset):
    """The training set of :class:`~mobilevit.data.transforms.MultiScaleDataset` (RandomResizedCrop,
    horizontal flip, RGB in [0, 1], optional random erasing), from a uint8 tensor. Indexed by the
    sampler's ``(height, width, index)`` keys; ``__getitems__`` (which the DataLoader calls with a
    whole batch) augments the batch at once."""

    in_memory = True

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        scale: tuple[float, float] = (0.08, 1.0),
        erasing: float = 0.0,
    ) -> None:
        self.images, self.labels = images, labels
        self.scale = tuple(scale)
        self.erase = v2.RandomErasing(p=erasing, value=0) if erasing > 0 else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> list[tuple[torch.Tensor, int]]:
        height, width = keys[0][0], keys[0][1]  # the sampler gives every key of a batch one size
        index = torch.tensor([k[2] for k in keys])
        images = self.images[index]  # (B, C, H, W) uint8
        boxes = random_boxes(len(index), images.shape[-2], images.shape[-1], self.scale)
        batch = resized_crops(images, boxes, (height, width))  # (B, C, height, width)
        flip = torch.rand(len(index)) < 0.5
        batch[flip] = batch[flip].flip(-1)
        batch = batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch  # grayscale -> RGB
        samples = [self.erase(image) if self.erase else image for image in batch]
        return list(zip(samples, self.labels[index].tolist(), strict=True))


class InMemoryEval(torch.utils.data.Dataset):
    """A validation set transformed once by :func:`~mobilevit.data.transforms.eval_transform`, all
    images in one call (the v2 transforms take a batch as they take an image)."""

    in_memory = True

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, img_size: int) -> None:
        self.images = eval_transform(img_size)(images)  # (N, 3, img_size, img_size) float
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
