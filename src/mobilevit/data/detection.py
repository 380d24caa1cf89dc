"""Object detection data: Pascal VOC or COCO (or the synthetic shapes in either layout) as
``(image, target)`` pairs for torchvision transforms v2, joint transforms, and the dataset wrappers
the multi-scale sampler indexes.

A target is a dict: ``boxes`` (tv_tensors.BoundingBoxes, XYXY in pixel-edge coordinates),
``labels`` (int64 in 1..K; 0 is the background), ``iscrowd`` (int64, COCO's crowd flag, 0 for VOC),
``image_id`` (int) and ``orig_size`` ((H, W) of the image as stored).

Bad input rules:

* an image without objects has ``boxes`` of shape [0, 4] and empty ``labels`` (allowed);
* a box partly outside the image is clipped to it; a box left narrower or shorter than 1 px (wholly
  outside, degenerate, or inverted with xmax < xmin or ymax < ymin) is dropped with its label, by
  every transform here, training and evaluation alike (torchvision's ClampBoundingBoxes, then
  SanitizeBoundingBoxes);
* an unknown VOC class name or COCO category id, or a VOC ``bndbox`` that is not four numbers,
  raises AnnotationError (a ValueError) naming it.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Any

import torch
from torchvision import datasets, tv_tensors
from torchvision.transforms import v2

from mobilevit.data.segmentation import (
    VOC_CLASSES,
    VOC_YEAR,
    AnnotationError,
    read_classes,
    read_sample,
    voc_root,
)
from mobilevit.errors import require_extra

Target = dict[str, Any]
SSD_MEAN_FILL = (123, 117, 104)  # torchvision's SSD reference fills zoomed-out borders with the mean


def _target(boxes: torch.Tensor, labels: list[int], iscrowd: list[int], image_id: int, size: tuple[int, int]) -> Target:
    return {
        "boxes": tv_tensors.BoundingBoxes(boxes.reshape(-1, 4).float(), format="XYXY", canvas_size=size),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "iscrowd": torch.tensor(iscrowd, dtype=torch.int64),
        "image_id": image_id,
        "orig_size": size,
    }


def voc_target(annotation: dict, label_of: dict[str, int], size: tuple[int, int], image_id: int, name: str) -> Target:
    """The target of one parsed VOC annotation. VOC's 1-based inclusive pixel indices become pixel
    edges (xmin - 1, ymin - 1, xmax, ymax), COCO's and torchvision's convention, so an object has
    the same box in both formats and a one-pixel object keeps a width of 1."""
    objects = annotation.get("object", [])
    unknown = sorted({obj.get("name") for obj in objects} - label_of.keys(), key=str)
    if unknown:
        raise AnnotationError(f"{name}: unknown class names {unknown}; known: {list(label_of)}")
    try:
        boxes = torch.tensor(
            [[float(obj["bndbox"][k]) for k in ("xmin", "ymin", "xmax", "ymax")] for obj in objects],
            dtype=torch.float32,
        ).reshape(-1, 4)
    except (KeyError, TypeError, ValueError) as err:
        raise AnnotationError(f"{name}: malformed bndbox ({err}); expected xmin, ymin, xmax, ymax numbers") from err
    boxes[:, :2] -= 1
    labels = [label_of[obj["name"]] for obj in objects]
    return _target(boxes, labels, [0] * len(labels), image_id, size)


class VOCDetectionTargets(torch.utils.data.Dataset):
    """torchvision's VOCDetection with v2 targets. Not ``wrap_dataset_for_transforms_v2``: its VOC
    wrapper knows only VOC's 20 classes and fails on an image without objects."""

    def __init__(self, voc: datasets.VOCDetection, classes: tuple[str, ...]):
        self.voc = voc
        self.classes = classes
        self.images = voc.images
        self.annotations = voc.annotations
        self._label_of = {name: label for label, name in enumerate(classes) if label}

    def __len__(self) -> int:
        return len(self.voc)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image, parsed = self.voc[index]
        size = (image.height, image.width)
        return image, voc_target(parsed["annotation"], self._label_of, size, index, self.annotations[index])


def voc_detection(root: str | os.PathLike, split: str) -> VOCDetectionTargets:
    """VOC's ``split`` (train, val or trainval) with classes VOC's 21, or those of
    ``VOC2012/classes.txt`` when present (background first)."""
    base = voc_root(root)
    folder = base / "VOCdevkit" / f"VOC{VOC_YEAR}"
    if not (folder / "ImageSets" / "Main" / f"{split}.txt").exists():
        raise FileNotFoundError(f"{folder}/ImageSets/Main/{split}.txt not found: VOC detection needs it")
    voc = datasets.VOCDetection(base, year=VOC_YEAR, image_set=split)
    return VOCDetectionTargets(voc, read_classes(folder, VOC_CLASSES))


def coco_files(root: str | os.PathLike, split: str) -> tuple[Path, Path] | None:
    """``(image folder, annotation file)`` of ``split`` under ``root`` or ``root/coco``: images in
    ``images/<split>/`` or ``<split>/`` (COCO's own layout, split train2017), annotations in
    ``annotations/instances_<split>.json``; None when absent."""
    for folder in (Path(root) / "coco", Path(root)):
        annotations = folder / "annotations" / f"instances_{split}.json"
        for images in (folder / "images" / split, folder / split):
            if annotations.exists() and images.is_dir():
                return images, annotations
    return None


class CocoDetectionTargets(torch.utils.data.Dataset):
    """torchvision's CocoDetection through ``wrap_dataset_for_transforms_v2``, with category ids
    mapped to contiguous labels 1..K in sorted id order; ``label_to_category`` maps them back."""

    def __init__(self, coco: datasets.CocoDetection):
        self.dataset = datasets.wrap_dataset_for_transforms_v2(
            coco, target_keys={"image_id", "boxes", "labels", "iscrowd"}
        )
        category_ids = sorted(coco.coco.cats)
        self.classes = ("background", *(coco.coco.cats[c]["name"] for c in category_ids))
        self.label_to_category = dict(enumerate(category_ids, start=1))
        self._label_of = {category: label for label, category in self.label_to_category.items()}
        self.images = [Path(coco.root) / coco.coco.imgs[i]["file_name"] for i in coco.ids]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, Target]:
        image, target = self.dataset[index]
        size = (image.height, image.width)
        if "boxes" not in target:  # the wrapper returns only image_id for an image without annotations
            return image, _target(torch.zeros(0, 4), [], [], target["image_id"], size)
        categories = target["labels"].tolist()
        unknown = sorted(set(categories) - self._label_of.keys())
        if unknown:
            raise AnnotationError(
                f"{self.images[index]}: unknown category ids {unknown}; the json lists {sorted(self._label_of)}"
            )
        labels = [self._label_of[c] for c in categories]
        boxes = target["boxes"].as_subclass(torch.Tensor)
        return image, _target(boxes, labels, target["iscrowd"], target["image_id"], size)


def coco_detection(root: str | os.PathLike, split: str) -> CocoDetectionTargets:
    """COCO-format ``split`` found by :func:`coco_files`; needs pycocotools."""
    found = coco_files(root, split)
    if found is None:
        raise FileNotFoundError(
            f"no COCO {split} split under {root}: expected annotations/instances_{split}.json and the images in "
            f"images/{split}/ or {split}/, in {root} or {root}/coco"
        )
    images, annotations = found
    require_extra("train", "COCO-format detection data", "pycocotools")  # torchvision's CocoDetection reads with it
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress to stdout
        return CocoDetectionTargets(datasets.CocoDetection(images, annotations))


def detection_dataset(root: str | os.PathLike, split: str, fmt: str = "auto") -> torch.utils.data.Dataset:
    """``fmt`` "coco" or "voc"; "auto" takes COCO when its files are there (so it wins where both
    are, as under :func:`~mobilevit.data.synthetic.make_shapes`: it carries crowd flags), else VOC."""
    if fmt not in ("auto", "coco", "voc"):
        raise ValueError(f"fmt must be 'auto', 'coco' or 'voc', got {fmt!r}")
    if fmt == "voc":
        return voc_detection(root, split)
    if fmt == "coco" or coco_files(root, split) is not None:
        return coco_detection(root, split)
    try:
        return voc_detection(root, split)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"{err}; nor is it COCO: no annotations/instances_{split}.json with images/{split}/ in {root} or "
            f"{root}/coco"
        ) from err


def _labels_and_crowd(sample: tuple[Any, Target]) -> tuple[torch.Tensor, torch.Tensor]:
    """What SanitizeBoundingBoxes drops along with the boxes."""
    return sample[1]["labels"], sample[1]["iscrowd"]


def _clip_and_drop() -> list[v2.Transform]:
    return [
        v2.ClampBoundingBoxes(),
        v2.SanitizeBoundingBoxes(labels_getter=_labels_and_crowd),
        v2.ToDtype(torch.float32, scale=True),
    ]


def detection_train_transform(height: int, width: int, ssd_augment: bool = False) -> v2.Compose:
    """Horizontal flip and resize to ``(height, width)``; with ``ssd_augment`` first torchvision's
    SSD reference's RandomZoomOut and RandomIoUCrop (off by default: they suit long schedules on real
    data more than a few epochs on small synthetic images). RGB in [0, 1]."""
    steps: list[v2.Transform] = [v2.ToImage()]
    if ssd_augment:
        steps += [v2.RandomZoomOut(fill={tv_tensors.Image: SSD_MEAN_FILL, "others": 0}), v2.RandomIoUCrop()]
    steps += [v2.RandomHorizontalFlip(), v2.Resize((height, width), antialias=True), *_clip_and_drop()]
    return v2.Compose(steps)


def detection_eval_transform(height: int, width: int) -> v2.Compose:
    """Resize to a fixed ``(height, width)`` so evaluation batches stack like training ones.

    IoU is unchanged by scaling x and y separately, so mAP at any IoU threshold is the same in the
    resized frame as in the original; only COCO's small/medium/large buckets depend on the absolute
    size: for those, map predictions back with :func:`rescale_boxes` to ``target["orig_size"]``.
    A model that resizes internally (torchvision's SSD transform) returns boxes in this frame too.
    """
    return v2.Compose([v2.ToImage(), v2.Resize((height, width), antialias=True), *_clip_and_drop()])


def rescale_boxes(boxes: torch.Tensor, size: tuple[int, int], orig_size: tuple[int, int]) -> torch.Tensor:
    """XYXY ``boxes`` on an image resized to ``size`` (H, W), mapped back to ``orig_size``."""
    sy, sx = orig_size[0] / size[0], orig_size[1] / size[1]
    return boxes.as_subclass(torch.Tensor) * boxes.new_tensor([sx, sy, sx, sy])


class DetectionDataset(torch.utils.data.Dataset):
    """Indexed by the sampler's ``(height, width, index)``: returns ``(image [3, h, w] float in
    [0, 1], target)`` augmented by :func:`detection_train_transform`.

    An image that cannot be read is skipped (``None``; :func:`collate_detection` drops it and
    counts it) unless ``strict``; a wrong annotation raises.
    """

    def __init__(self, dataset: torch.utils.data.Dataset, ssd_augment: bool = False, strict: bool = False):
        self.dataset = dataset
        self.ssd_augment = ssd_augment
        self.strict = strict

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]) -> tuple[torch.Tensor, Target] | None:
        height, width, index = key
        sample = read_sample(self.dataset, index, self.strict)
        if sample is None:
            return None
        return detection_train_transform(height, width, self.ssd_augment)(*sample)


class DetectionEvalDataset(torch.utils.data.Dataset):
    """Indexed by int: ``(image, target)`` resized to ``size`` by :func:`detection_eval_transform`.
    Every sample must be readable: an evaluation that skips images is not comparable."""

    def __init__(self, dataset: torch.utils.data.Dataset, size: tuple[int, int]):
        self.dataset = dataset
        self.transform = detection_eval_transform(*size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        return self.transform(*read_sample(self.dataset, index, strict=True))


def collate_detection(batch: list) -> tuple[torch.Tensor, list[Target], int]:
    """Stack the readable images into ``[B, 3, h, w]`` (one size per batch, from the sampler or the
    eval resize) and list their targets; also return how many were skipped."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return torch.empty(0), [], len(batch)
    return torch.stack([image for image, _ in kept]), [target for _, target in kept], len(batch) - len(kept)
