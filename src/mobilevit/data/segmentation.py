"""Semantic segmentation data: Pascal VOC (or the synthetic shapes in its layout), joint image and
mask transforms, and the dataset wrappers the multi-scale sampler indexes.

Masks hold class ids in ``[0, num_classes)`` and 255, the ignore index (VOC's object borders and
the padding of training crops); the loss and the mIoU skip 255.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from mobilevit.errors import UnreadableImageError
from mobilevit.models.segmentation import IGNORE_INDEX

log = logging.getLogger(__name__)

VOC_YEAR = "2012"


def _voc_colour_map(n: int = 256) -> np.ndarray:
    """[n, 3] uint8 colours of Pascal VOC's masks (class 0 black, 1 dark red, 2 green...; 255, the
    ignore id, light beige): fixed, so a class has the same colour in every image and run."""
    palette = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, colour = i, [0, 0, 0]
        for bit in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((c >> channel) & 1) << bit
            c >>= 3
        palette[i] = colour
    return palette


VOC_PALETTE = _voc_colour_map()


def class_colours(num_classes: int) -> list[list[int]]:
    """The palette colour [R, G, B] of each class (repeating past 256 classes), as JSON for pages that
    draw masks and boxes in the same colours as the PNGs."""
    return [VOC_PALETTE[i % len(VOC_PALETTE)].tolist() for i in range(num_classes)]


VOC_CLASSES = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# ADE20K (SceneParsing) as ml-cvnets trains it: 150 classes, "other" (mask 0) ignored, so output i
# is ADE20K label i + 1 (ml-cvnets' data/datasets/segmentation/ade20k.py, class_names()[1:]).
ADE20K_CLASSES = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)


class AnnotationError(ValueError):
    """A mask or box annotation does not fit its image or the class list. Unlike an unreadable
    image, this is never skipped: it means the dataset itself is wrong."""


def voc_root(root: str | os.PathLike, year: str = VOC_YEAR) -> Path:
    """The folder holding ``VOCdevkit`` (what torchvision's VOC datasets take), given either that
    folder or ``VOCdevkit/VOC<year>`` itself."""
    path = Path(root)
    if path.name == f"VOC{year}" and path.parent.name == "VOCdevkit":
        base = path.parent.parent
    else:
        base = path.parent if path.name == "VOCdevkit" else path
    if (base / "VOCdevkit" / f"VOC{year}").is_dir():
        return base
    raise FileNotFoundError(
        f"{path} is not a Pascal VOC folder: give the folder that holds VOCdevkit/VOC{year}/ (with "
        f"JPEGImages/, SegmentationClass/ or Annotations/, and ImageSets/), or VOCdevkit/VOC{year} itself"
    )


def read_classes(folder: Path, default: tuple[str, ...]) -> tuple[str, ...]:
    """The class names in ``folder/classes.txt`` (one a line, background first), else ``default``."""
    path = folder / "classes.txt"
    if not path.exists():
        return default
    names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    if not names or names[0] != "background":
        raise ValueError(f"{path} must list one class a line with 'background' first, got {names[:3]}")
    return names


def voc_segmentation(root: str | os.PathLike, split: str) -> torch.utils.data.Dataset:
    """VOC's ``split`` (train, val or trainval) as (PIL image, tv_tensors.Mask) pairs. Its
    ``classes`` are VOC's 21, or those of ``VOC2012/classes.txt`` when present."""
    base = voc_root(root)
    folder = base / "VOCdevkit" / f"VOC{VOC_YEAR}"
    split_file = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not split_file.exists():
        raise FileNotFoundError(f"{split_file} not found: VOC segmentation needs ImageSets/Segmentation/{split}.txt")
    voc = datasets.VOCSegmentation(base, year=VOC_YEAR, image_set=split)
    voc.classes = read_classes(folder, VOC_CLASSES)  # set here, the wrapper forwards it and keeps it when pickled
    return datasets.wrap_dataset_for_transforms_v2(voc)


def segmentation_train_transform(height: int, width: int, scale: tuple[float, float] = (0.5, 2.0)) -> v2.Compose:
    """The DeepLab recipe as ml-cvnets runs it for VOC: resize the shorter side to ``s * min(height,
    width)`` with ``s`` uniform in ``scale`` (256 to 1024 for 512 crops), random crop ``(height,
    width)`` padding the image with 0 and the mask with 255, horizontal flip; RGB in [0, 1]."""
    shorter = min(height, width)
    low = round(scale[0] * shorter)
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResize(low, max(low + 1, round(scale[1] * shorter))),
            v2.RandomCrop((height, width), pad_if_needed=True, fill={tv_tensors.Mask: IGNORE_INDEX, "others": 0}),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        ]
    )


def segmentation_eval_transform(height: int, width: int) -> v2.Compose:
    """Resize image and mask to ``(height, width)`` (the mask by nearest neighbour), as ml-cvnets
    evaluates VOC at 512x512: the mIoU is computed at that size, not at each image's own size."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((height, width), antialias=True),
            v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        ]
    )


def file_name(dataset: Any, index: int, attribute: str = "images") -> str:
    """The file behind sample ``index`` (torchvision's VOC datasets list them), for messages."""
    files = getattr(dataset, attribute, None)
    return str(files[index]) if files is not None else f"sample {index}"


def read_sample(dataset: Any, index: int, strict: bool) -> Any:
    """``dataset[index]``, or None when its image cannot be decoded (logged), or
    UnreadableImageError when ``strict``. A wrong annotation always raises."""
    try:
        return dataset[index]
    except AnnotationError:
        raise
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for broken files, XML's for broken XML
        if strict:
            raise UnreadableImageError(
                f"cannot read {file_name(dataset, index)}: {err} (training skips and counts such files "
                "unless --strict; evaluation needs them all)"
            ) from err
        log.warning("skipping unreadable sample %d (%s): %s", index, file_name(dataset, index), err)
        return None


def check_mask(image: Any, mask: torch.Tensor, num_classes: int, name: str) -> None:
    """Raise AnnotationError unless ``mask`` is one channel of the image's size holding only class
    ids and 255."""
    if mask.ndim == 3 and mask.shape[0] != 1:
        raise AnnotationError(f"{name}: mask has {mask.shape[0]} channels; expected one channel of class ids")
    image_size, mask_size = tuple(F.get_size(image)), tuple(mask.shape[-2:])
    if mask_size != image_size:
        raise AnnotationError(
            f"{name}: mask is {mask_size[0]}x{mask_size[1]} (HxW) but its image is {image_size[0]}x{image_size[1]}"
        )
    ids = torch.unique(mask).tolist()
    unknown = [i for i in ids if not (0 <= i < num_classes or i == IGNORE_INDEX)]
    if unknown:
        raise AnnotationError(
            f"{name}: mask holds unknown class ids {unknown}; expected ids in [0, {num_classes}) "
            f"and {IGNORE_INDEX}, the ignore index"
        )


class SegmentationDataset(torch.utils.data.Dataset):
    """Indexed by the sampler's ``(height, width, index)``: returns ``(image [3, h, w] float in
    [0, 1], mask [h, w] int64)`` augmented by :func:`segmentation_train_transform`.

    An image that cannot be read is skipped (``None``; :func:`collate_segmentation` drops it and
    counts it) unless ``strict``; a mask that does not fit its image or the classes raises
    (:func:`check_mask`). ``num_classes`` defaults to ``len(dataset.classes)``.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        num_classes: int | None = None,
        scale: tuple[float, float] = (0.5, 2.0),
        strict: bool = False,
    ):
        self.dataset = dataset
        self.num_classes = len(dataset.classes) if num_classes is None else num_classes
        self.scale = tuple(scale)
        self.strict = strict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        height, width, index = key
        sample = read_sample(self.dataset, index, self.strict)
        if sample is None:
            return None
        image, mask = sample
        check_mask(image, mask, self.num_classes, file_name(self.dataset, index, "masks"))
        image, mask = segmentation_train_transform(height, width, self.scale)(image, mask)
        return image, mask[0]


class SegmentationEvalDataset(torch.utils.data.Dataset):
    """Indexed by int: ``(image, mask)`` resized to ``size`` by :func:`segmentation_eval_transform`.
    Every sample must be readable: an evaluation that skips images is not comparable."""

    def __init__(self, dataset: torch.utils.data.Dataset, size: tuple[int, int], num_classes: int | None = None):
        self.dataset = dataset
        self.num_classes = len(dataset.classes) if num_classes is None else num_classes
        self.transform = segmentation_eval_transform(*size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = read_sample(self.dataset, index, strict=True)
        check_mask(image, mask, self.num_classes, file_name(self.dataset, index, "masks"))
        image, mask = self.transform(image, mask)
        return image, mask[0]


def collate_segmentation(batch: list) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Stack the readable samples into ``images [B, 3, h, w]`` and ``masks [B, h, w]`` (int64);
    also return how many were skipped."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return torch.empty(0), torch.empty(0, dtype=torch.long), len(batch)
    images = torch.stack([image for image, _ in kept])
    masks = torch.stack([mask for _, mask in kept])
    return images, masks, len(batch) - len(kept)
