"""The synthetic shapes: read by torchvision's own VOC datasets and by pycocotools, with class
masks, instance masks and boxes that agree."""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image
from torchvision import datasets

from mobilevit.data.synthetic import SHAPES_CLASSES, draw_scene, make_shapes

coco_api = pytest.importorskip("pycocotools.coco")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

NUM_TRAIN, NUM_VAL, SIZE = 12, 4, (96, 128)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), NUM_TRAIN, NUM_VAL, SIZE, seed=0)


def voc(root):
    return root / "VOCdevkit" / "VOC2012"


def tree_digest(root) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_voc_layout_loads_with_torchvision(shapes):
    seg = datasets.VOCSegmentation(shapes, year="2012", image_set="train")
    det = datasets.VOCDetection(shapes, year="2012", image_set="val")
    assert (len(seg), len(det)) == (NUM_TRAIN, NUM_VAL)
    assert len(datasets.VOCSegmentation(shapes, year="2012", image_set="trainval")) == NUM_TRAIN + NUM_VAL
    image, mask = seg[0]
    assert image.size == mask.size == (SIZE[1], SIZE[0]) and image.mode == "RGB" and mask.mode == "P"
    ids = set().union(*(np.unique(np.asarray(seg[i][1])).tolist() for i in range(len(seg))))
    assert ids == {0, 1, 2, 255}
    size = det[0][1]["annotation"]["size"]
    assert (int(size["height"]), int(size["width"])) == SIZE
    assert (voc(shapes) / "classes.txt").read_text().split() == list(SHAPES_CLASSES)
    assert (shapes / "coco" / "classes.txt").read_text().split() == list(SHAPES_CLASSES)


def test_coco_json_loads_with_pycocotools(shapes):
    coco = coco_api.COCO(str(shapes / "coco" / "annotations" / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["rectangle", "ellipse"]
    assert len(coco.getImgIds()) == NUM_TRAIN and coco.getAnnIds()
    for image in coco.loadImgs(coco.getImgIds()):
        assert (shapes / "coco" / "images" / "train" / image["file_name"]).is_file()
        assert (image["height"], image["width"]) == SIZE
    for ann in coco.loadAnns(coco.getAnnIds()):
        pixels = coco.annToMask(ann)
        ys, xs = np.nonzero(pixels)
        x, y, w, h = ann["bbox"]
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert ann["area"] == pixels.sum() and ann["iscrowd"] == 0


def xywh_to_xyxy(box):
    x, y, w, h = box
    return x, y, x + w, y + h


def voc_boxes(root, name):
    objects = ET.parse(voc(root) / "Annotations" / f"{name}.xml").getroot().iter("object")
    result = []
    for obj in objects:
        box = obj.find("bndbox")
        xmin, ymin, xmax, ymax = (int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        result.append((obj.findtext("name"), (xmin - 1, ymin - 1, xmax, ymax)))  # VOC indices are 1-based, inclusive
    return result


@pytest.mark.parametrize("split", ["train", "val"])
def test_masks_and_boxes_agree(shapes, split):
    coco = coco_api.COCO(str(shapes / "coco" / "annotations" / f"instances_{split}.json"))
    names = {c["id"]: c["name"] for c in coco.loadCats(coco.getCatIds())}
    for image in coco.loadImgs(coco.getImgIds()):
        name = image["file_name"].removesuffix(".jpg")
        classes = np.asarray(Image.open(voc(shapes) / "SegmentationClass" / f"{name}.png"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        coco_boxes = [(names[a["category_id"]], xywh_to_xyxy(a["bbox"])) for a in anns]
        assert voc_boxes(shapes, name) == coco_boxes
        covered = np.zeros(classes.shape, bool)
        for ann, (_, (x0, y0, x1, y1)) in zip(anns, coco_boxes, strict=True):
            instance = coco.annToMask(ann).astype(bool)
            label = ann["category_id"]
            assert set(np.unique(classes[instance]).tolist()) <= {label, 255}
            ys, xs = np.nonzero(instance & (classes == label))
            inner = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert np.abs(np.subtract(inner, (x0, y0, x1, y1))).max() <= 1
            covered |= instance
        assert set(np.unique(classes[~covered]).tolist()) <= {0, 255}  # no object pixels without an object


def test_same_seed_same_files_other_seed_other_images(tmp_path):
    first = make_shapes(tmp_path / "a", 3, 1, (32, 48), seed=1)
    again = make_shapes(tmp_path / "b", 3, 1, (32, 48), seed=1)
    other = make_shapes(tmp_path / "c", 3, 1, (32, 48), seed=2)
    assert tree_digest(first) == tree_digest(again) != tree_digest(other)


def test_images_without_objects(tmp_path):
    root = make_shapes(tmp_path, 2, 1, (32, 32), p_empty=1.0)
    for split, count in (("train", 2), ("val", 1)):
        det = datasets.VOCDetection(root, year="2012", image_set=split)
        assert [det[i][1]["annotation"]["object"] for i in range(count)] == [[]] * count
        seg = datasets.VOCSegmentation(root, year="2012", image_set=split)
        assert all(np.asarray(seg[i][1]).max() == 0 for i in range(count))
        coco = coco_api.COCO(str(root / "coco" / "annotations" / f"instances_{split}.json"))
        assert len(coco.getImgIds()) == count and coco.getAnnIds() == []


def test_scenes_vary_and_later_objects_cover_earlier_ones():
    counts, classes, occluded = set(), set(), 0
    for seed in range(60):
        image, instances, labels = draw_scene(np.random.default_rng(seed), 64, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        counts.add(len(labels))
        classes |= set(labels)
        for k, label in enumerate(labels, start=1):
            ys, xs = np.nonzero(instances == k)
            box_area = (xs.max() + 1 - xs.min()) * (ys.max() + 1 - ys.min())
            others = instances[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] > k
            occluded += label == 1 and len(xs) < box_area and others.any()  # a rectangle with a later object on it
    assert counts == {0, 1, 2, 3} and classes == {1, 2} and occluded > 0
