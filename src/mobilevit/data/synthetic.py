"""Synthetic shapes for segmentation and detection: coloured rectangles and ellipses on noisy
backgrounds, written in the Pascal VOC and COCO layouts so the real loaders read them. Small enough
to show a model learning on a CPU in minutes, and deterministic given the seed.

Each object's box is the tight box of its visible pixels (later objects are drawn on top), so
instance masks and boxes agree exactly. As in real VOC, a thin band where two regions meet is
marked 255 (ignore) in the class masks; an object is only placed where every object stays at least
half visible and keeps class pixels within 1 px of each side of its box.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mobilevit.data import cache_dir
from mobilevit.data.segmentation import IGNORE_INDEX, VOC_PALETTE

SHAPES_CLASSES = ("background", "rectangle", "ellipse")
RECTANGLE, ELLIPSE = 1, 2
VOC_YEAR = "2012"
MIN_VISIBLE = 0.5  # an object is never covered by later ones beyond half its area
COLOUR_DISTANCE = 160  # minimum L1 distance of an object's colour from the background's
NOISE_STD = 10.0

Box = tuple[int, int, int, int]  # x0, y0, x1, y1: pixel edges, x1 and y1 exclusive


def _footprint(rng: np.random.Generator, height: int, width: int, label: int) -> np.ndarray:
    """A rectangle or an ellipse of random size (1/8 to 1/2 of each side) at a random place."""
    h = int(rng.integers(max(4, height // 8), height // 2 + 1))
    w = int(rng.integers(max(4, width // 8), width // 2 + 1))
    y0, x0 = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
    mask = np.zeros((height, width), bool)
    if label == RECTANGLE:
        mask[y0 : y0 + h, x0 : x0 + w] = True
    else:
        yy, xx = np.ogrid[:h, :w]
        mask[y0 : y0 + h, x0 : x0 + w] = ((yy + 0.5) / h * 2 - 1) ** 2 + ((xx + 0.5) / w * 2 - 1) ** 2 <= 1
    return mask


def _colour_apart(rng: np.random.Generator, background: np.ndarray) -> np.ndarray:
    while True:
        colour = rng.integers(0, 256, 3)
        if np.abs(colour - background).sum() >= COLOUR_DISTANCE:
            return colour


def ignore_border(instances: np.ndarray) -> np.ndarray:
    """Pixels on either side of an edge between two regions: VOC's ignore border, one pixel wide
    on each side here."""
    border = np.zeros(instances.shape, bool)
    rows = instances[1:, :] != instances[:-1, :]
    cols = instances[:, 1:] != instances[:, :-1]
    border[1:, :] |= rows
    border[:-1, :] |= rows
    border[:, 1:] |= cols
    border[:, :-1] |= cols
    return border


def tight_box(mask: np.ndarray) -> Box:
    """The box of a mask's pixels, in pixel edges."""
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _fits(instances: np.ndarray, areas: list[int]) -> bool:
    """Every object keeps at least MIN_VISIBLE of its area, and what the ignore border leaves of it
    spans its box within 1 px: no sliver that only the border covers sticks out."""
    border = ignore_border(instances)
    for k, area in enumerate(areas, start=1):
        visible = instances == k
        core = visible & ~border
        if np.count_nonzero(visible) < MIN_VISIBLE * area or not core.any():
            return False
        if max(abs(a - b) for a, b in zip(tight_box(visible), tight_box(core), strict=True)) > 1:
            return False
    return True


def draw_scene(
    rng: np.random.Generator, height: int, width: int, p_empty: float = 0.05, attempts: int = 20
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """An RGB image (uint8 HxWx3), its instance map (0 background, k the k-th object) and the
    class of each object. Holds no object with probability ``p_empty``, else 1 to 3 (fewer when
    ``attempts`` random places all break the rules of :func:`_fits`)."""
    background = rng.integers(0, 256, 3)
    image = np.broadcast_to(background, (height, width, 3)).astype(np.float32)
    instances = np.zeros((height, width), np.int32)
    labels: list[int] = []
    areas: list[int] = []
    count = 0 if rng.random() < p_empty else int(rng.integers(1, 4))
    for _ in range(count):
        label = int(rng.integers(RECTANGLE, ELLIPSE + 1))
        for _ in range(attempts):
            mask = _footprint(rng, height, width, label)
            candidate = np.where(mask, len(labels) + 1, instances)
            if _fits(candidate, [*areas, int(mask.sum())]):
                break
        else:
            continue
        image[mask] = _colour_apart(rng, background)
        labels.append(label)
        areas.append(int(mask.sum()))
        instances = candidate
    image += rng.normal(0.0, NOISE_STD, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), instances, labels


def semantic_mask(instances: np.ndarray, labels: list[int]) -> np.ndarray:
    """Class ids per pixel, 255 on the ignore border."""
    classes = np.array([0, *labels], np.uint8)[instances]
    classes[ignore_border(instances)] = IGNORE_INDEX
    return classes


def instance_boxes(instances: np.ndarray, count: int) -> list[tuple[Box, int]]:
    """The tight box and the pixel count of each object's visible pixels."""
    return [(tight_box(instances == k), int(np.count_nonzero(instances == k))) for k in range(1, count + 1)]


def coco_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE: run lengths over the pixels in column-major order, first run zeros."""
    flat = mask.T.ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate([[0], changes, [flat.size]])).tolist()
    return {"size": list(mask.shape), "counts": [0, *counts] if flat[0] else counts}


def voc_annotation(name: str, height: int, width: int, objects: list[tuple[str, Box]]) -> ET.ElementTree:
    """A VOC annotation; ``bndbox`` holds VOC's 1-based inclusive pixel indices."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = f"VOC{VOC_YEAR}"
    ET.SubElement(root, "filename").text = f"{name}.jpg"
    size = ET.SubElement(root, "size")
    for tag, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for class_name, (x0, y0, x1, y1) in objects:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_name
        for tag in ("pose", "truncated", "difficult"):
            ET.SubElement(obj, tag).text = "Unspecified" if tag == "pose" else "0"
        bndbox = ET.SubElement(obj, "bndbox")
        for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
            ET.SubElement(bndbox, tag).text = str(value)
    return ET.ElementTree(root)


def _write_lines(path: Path, lines: list[str] | tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def _coco_categories() -> list[dict]:
    return [{"id": i, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES_CLASSES) if i]


def coco_annotations(
    instances: np.ndarray, labels: list[int], boxes: list[tuple[Box, int]], image_id: int, first_id: int
) -> list[dict]:
    """One COCO annotation per object (its RLE mask, box and pixel area, from
    :func:`instance_boxes`); annotation ids count from ``first_id``."""
    return [
        {
            "id": first_id + k - 1,
            "image_id": image_id,
            "category_id": label,
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "area": area,
            "iscrowd": 0,
            "segmentation": coco_rle(instances == k),
        }
        for k, (label, ((x0, y0, x1, y1), area)) in enumerate(zip(labels, boxes, strict=True), start=1)
    ]


def _jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def _palette_png(classes: np.ndarray, path: Path) -> None:
    mask = Image.fromarray(classes, mode="P")
    mask.putpalette(VOC_PALETTE.tobytes())
    mask.save(path)


def make_shapes(
    root: str | os.PathLike,
    num_train: int = 256,
    num_val: int = 64,
    size: tuple[int, int] = (128, 128),
    seed: int = 0,
    p_empty: float = 0.05,
) -> Path:
    """Write the shapes dataset under ``root`` and return it as a Path:

    * ``VOCdevkit/VOC2012/``: JPEGImages, SegmentationClass (palette PNGs, 255 = ignore),
      Annotations, ImageSets/{Segmentation,Main}/{train,val,trainval}.txt and classes.txt;
    * ``coco/``: images/{train,val}/, annotations/instances_{train,val}.json and classes.txt.

    Image ``i`` depends only on ``(seed, i)``; train images come first, then val.
    """
    root = Path(root)
    height, width = size
    voc = root / "VOCdevkit" / f"VOC{VOC_YEAR}"
    coco = root / "coco"
    for folder in (voc / "JPEGImages", voc / "SegmentationClass", voc / "Annotations", coco / "annotations"):
        folder.mkdir(parents=True, exist_ok=True)
    splits = {"train": range(num_train), "val": range(num_train, num_train + num_val)}
    for split, indices in splits.items():
        names = [f"{i:06d}" for i in indices]
        (coco / "images" / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for index, name in zip(indices, names, strict=True):
            image, instances, labels = draw_scene(np.random.default_rng([seed, index]), height, width, p_empty)
            jpeg = _jpeg(image)
            (voc / "JPEGImages" / f"{name}.jpg").write_bytes(jpeg)
            (coco / "images" / split / f"{name}.jpg").write_bytes(jpeg)
            _palette_png(semantic_mask(instances, labels), voc / "SegmentationClass" / f"{name}.png")
            boxes = instance_boxes(instances, len(labels))
            objects = [(SHAPES_CLASSES[label], box) for label, (box, _) in zip(labels, boxes, strict=True)]
            voc_annotation(name, height, width, objects).write(voc / "Annotations" / f"{name}.xml")
            images.append({"id": index + 1, "file_name": f"{name}.jpg", "height": height, "width": width})
            annotations += coco_annotations(instances, labels, boxes, index + 1, len(annotations) + 1)
        for task in ("Segmentation", "Main"):
            _write_lines(voc / "ImageSets" / task / f"{split}.txt", names)
        dataset = {
            "info": {"description": f"synthetic shapes, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": _coco_categories(),
        }
        (coco / "annotations" / f"instances_{split}.json").write_text(json.dumps(dataset))
    trainval = [f"{i:06d}" for i in range(num_train + num_val)]
    for task in ("Segmentation", "Main"):
        _write_lines(voc / "ImageSets" / task / "trainval.txt", trainval)
    _write_lines(voc / "classes.txt", SHAPES_CLASSES)
    _write_lines(coco / "classes.txt", SHAPES_CLASSES)
    return root


SHAPES = "shapes"  # the built-in segmentation and detection data: synthetic shapes made on first use
SHAPES_SPLITS = (512, 128)  # training and validation images of the built-in shapes data, 128x128


def shapes_root() -> Path:
    """The synthetic shapes dataset in the cache, written once (a few seconds)."""
    root = cache_dir() / f"{SHAPES}-{SHAPES_SPLITS[0]}-{SHAPES_SPLITS[1]}"
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


def data_root(data: str) -> Path:
    """The folder a segmentation or detection ``--data`` names: ``shapes`` is the built-in one."""
    return shapes_root() if data == SHAPES else Path(data)


def structured_images(batch: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """RGB images in [0, 1] with gradients, stripes and coloured shapes: unlike noise, they have
    spatial structure and channels that differ, so flipped channels or mixed-up patches show."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    images = []
    for _ in range(batch):
        phase = torch.rand(3, generator=gen) * 6.28
        img = torch.stack(
            [
                xx,
                0.5 + 0.5 * torch.sin(12 * yy + phase[1]),
                0.5 + 0.5 * torch.cos(7 * (xx + yy) + phase[2]),
            ]
        )
        for _ in range(4):
            cy, cx, ry, rx = torch.rand(4, generator=gen).tolist()
            mask = ((yy - cy) / (0.05 + 0.3 * ry)) ** 2 + ((xx - cx) / (0.05 + 0.3 * rx)) ** 2 < 1
            img[:, mask] = torch.rand(3, 1, generator=gen)
        images.append(img)
    return torch.stack(images)
