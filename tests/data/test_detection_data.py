"""VOC and COCO detection data on the synthetic shapes: targets, transforms, the bad-input rules."""

from __future__ import annotations

import json
import logging
import pickle
import shutil

import pytest
import torch

from mobilevit.data.detection import (
    CocoDetectionTargets,
    DetectionDataset,
    DetectionEvalDataset,
    VOCDetectionTargets,
    coco_detection,
    collate_detection,
    detection_dataset,
    rescale_boxes,
    voc_detection,
)
from mobilevit.data.sampler import MultiScaleBatchSampler
from mobilevit.data.synthetic import SHAPES_CLASSES, make_shapes, voc_annotation
from mobilevit.errors import UnreadableImageError

pytest.importorskip("pycocotools")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")

SIZE = (96, 128)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), 6, 3, SIZE)


@pytest.fixture
def fresh(tmp_path):
    """A dataset of its own, for tests that break files."""
    return make_shapes(tmp_path, 2, 1, SIZE)


def write_voc_objects(root, name, objects):
    """Replace an annotation's objects; boxes in pixel edges, as ``voc_annotation`` takes them."""
    path = root / "VOCdevkit" / "VOC2012" / "Annotations" / f"{name}.xml"
    voc_annotation(name, *SIZE, objects).write(path)


def edit_coco(root, split, edit):
    path = root / "coco" / "annotations" / f"instances_{split}.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("split", ["train", "val"])
def test_voc_and_coco_give_the_same_targets(shapes, split):
    voc, coco = voc_detection(shapes, split), coco_detection(shapes, split)
    assert voc.classes == coco.classes == SHAPES_CLASSES and coco.label_to_category == {1: 1, 2: 2}
    assert len(voc) == len(coco) == {"train": 6, "val": 3}[split]
    for index in range(len(voc)):
        (image, a), (_, b) = voc[index], coco[index]
        assert a["boxes"].dtype == b["boxes"].dtype == torch.float32
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["labels"], b["labels"])
        assert a["orig_size"] == b["orig_size"] == SIZE == (image.height, image.width)
        assert tuple(b["boxes"].canvas_size) == SIZE and b["boxes"].format.name == "XYXY"
        assert a["iscrowd"].tolist() == b["iscrowd"].tolist() == [0] * len(a["labels"])


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_pickled_dataset_keeps_its_classes(shapes, fmt):  # as DataLoader workers started by spawn get it
    dataset = detection_dataset(shapes, "train", fmt)
    back = pickle.loads(pickle.dumps(dataset))
    assert back.classes == SHAPES_CLASSES and torch.equal(back[1][1]["boxes"], dataset[1][1]["boxes"])


def test_coco_category_ids_become_contiguous_labels(fresh):
    def renumber(data):
        for category in data["categories"]:
            category["id"] = {1: 9, 2: 5}[category["id"]]
        for ann in data["annotations"]:
            ann["category_id"] = {1: 9, 2: 5}[ann["category_id"]]

    edit_coco(fresh, "train", renumber)
    dataset = coco_detection(fresh, "train")
    assert dataset.label_to_category == {1: 5, 2: 9} and dataset.classes == ("background", "ellipse", "rectangle")
    voc = voc_detection(fresh, "train")
    for index in range(len(dataset)):
        names = [voc.classes[i] for i in voc[index][1]["labels"]]
        assert [dataset.classes[i] for i in dataset[index][1]["labels"]] == names


def test_format_is_picked_by_the_files_present(fresh, tmp_path_factory):
    assert isinstance(detection_dataset(fresh, "train"), CocoDetectionTargets)
    assert isinstance(detection_dataset(fresh, "train", fmt="voc"), VOCDetectionTargets)
    assert isinstance(detection_dataset(fresh / "coco", "val"), CocoDetectionTargets)
    with pytest.raises(ValueError, match="fmt must be"):
        detection_dataset(fresh, "train", fmt="yolo")
    shutil.rmtree(fresh / "coco")
    assert isinstance(detection_dataset(fresh, "val"), VOCDetectionTargets)
    assert isinstance(detection_dataset(fresh / "VOCdevkit" / "VOC2012", "val"), VOCDetectionTargets)
    with pytest.raises(FileNotFoundError, match="instances_val.json"):
        coco_detection(fresh, "val")
    with pytest.raises(FileNotFoundError, match="not a Pascal VOC folder"):
        detection_dataset(tmp_path_factory.mktemp("empty"), "val")


@pytest.mark.parametrize("fmt", ["voc", "coco"])
def test_image_without_objects_has_empty_targets(tmp_path, fmt):
    dataset = detection_dataset(make_shapes(tmp_path, 2, 1, SIZE, p_empty=1.0), "train", fmt)
    _, target = dataset[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,) and target["iscrowd"].shape == (0,)
    for wrapped, key in (
        (DetectionDataset(dataset), (32, 48, 1)),
        (DetectionDataset(dataset, ssd_augment=True), (32, 48, 1)),
        (DetectionEvalDataset(dataset, (32, 48)), 1),
    ):
        image, target = wrapped[key]
        assert image.shape == (3, 32, 48) and target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, targets, skipped = collate_detection([wrapped[0], wrapped[1]])
    assert images.shape == (2, 3, 32, 48) and [len(t["labels"]) for t in targets] == [0, 0] and skipped == 0


def test_voc_boxes_outside_the_image_are_clipped_or_dropped(fresh):
    objects = [
        ("rectangle", (-10, 5, 200, 40)),  # partly outside: clipped
        ("ellipse", (130, 10, 150, 20)),  # wholly outside: nothing left
        ("rectangle", (50, 10, 40, 30)),  # inverted: xmax < xmin
        ("ellipse", (20, 30, 21, 31)),  # one pixel: kept
    ]
    write_voc_objects(fresh, "000000", objects)
    raw = voc_detection(fresh, "train")
    assert raw[0][1]["labels"].tolist() == [1, 2, 1, 2]  # as annotated; the transforms apply the rule
    _, target = DetectionEvalDataset(raw, SIZE)[0]
    assert target["boxes"].tolist() == [[0, 5, 128, 40], [20, 30, 21, 31]]
    assert target["labels"].tolist() == [1, 2] and target["iscrowd"].tolist() == [0, 0]
    _, target = DetectionDataset(raw)[(48, 64, 0)]  # at half size the one-pixel box is too small: dropped
    assert target["labels"].tolist() == [1] and (target["boxes"][:, 2:] <= torch.tensor([64, 48])).all()


def test_coco_boxes_outside_the_image_are_clipped_or_dropped(fresh):
    boxes = [[-10, 5, 210, 35], [50, 10, -10, 20], [10, 10, 5, 5]]  # x, y, w, h: clipped, inverted, kept

    def place(data):
        first = data["images"][0]["id"]
        data["annotations"] = [a for a in data["annotations"] if a["image_id"] != first] + [
            {"id": 1000 + i, "image_id": first, "category_id": 1, "bbox": bbox, "area": 1, "iscrowd": i % 2}
            for i, bbox in enumerate(boxes)
        ]

    edit_coco(fresh, "train", place)
    _, target = DetectionEvalDataset(coco_detection(fresh, "train"), SIZE)[0]
    assert target["boxes"].tolist() == [[0, 5, 128, 40], [10, 10, 15, 15]]
    assert target["iscrowd"].tolist() == [0, 0]  # the crowd flag of the dropped box went with it


def test_unknown_class_name_is_an_error_not_a_skip(fresh):
    write_voc_objects(fresh, "000001", [("rectangle", (1, 1, 9, 9)), ("triangle", (2, 2, 8, 8))])
    dataset = voc_detection(fresh, "train")
    with pytest.raises(ValueError, match=r"000001\.xml: unknown class names \['triangle'\]"):
        dataset[1]
    with pytest.raises(ValueError, match="triangle"):
        DetectionDataset(dataset)[(32, 32, 1)]


def test_malformed_voc_box_is_an_error(fresh):
    path = fresh / "VOCdevkit" / "VOC2012" / "Annotations" / "000002.xml"
    write_voc_objects(fresh, "000002", [("ellipse", (1, 1, 9, 9))])
    path.write_text(path.read_text().replace("<xmin>2</xmin>", "<xmin>left</xmin>"))
    with pytest.raises(ValueError, match="malformed bndbox"):
        voc_detection(fresh, "val")[0]


def test_unknown_category_id_is_an_error(fresh):
    edited = []

    def relabel(data):
        data["annotations"][0]["category_id"] = 7
        edited.append(data["annotations"][0]["image_id"])

    edit_coco(fresh, "train", relabel)
    dataset = coco_detection(fresh, "train")
    with pytest.raises(ValueError, match=r"unknown category ids \[7\]; the json lists \[1, 2\]"):
        DetectionDataset(dataset)[(32, 32, dataset.dataset.ids.index(edited[0]))]


def test_train_boxes_follow_resize_and_flip(shapes):
    torch.manual_seed(0)
    raw = coco_detection(shapes, "train")
    dataset = DetectionDataset(raw)
    flips = set()
    for index in range(len(raw)):
        boxes = raw[index][1]["boxes"] * torch.tensor([96 / 128, 64 / 96] * 2)
        image, target = dataset[(64, 96, index)]
        assert image.shape == (3, 64, 96) and image.dtype == torch.float32
        assert tuple(target["boxes"].canvas_size) == (64, 96) and target["orig_size"] == SIZE
        mirrored = torch.stack([96 - boxes[:, 2], boxes[:, 1], 96 - boxes[:, 0], boxes[:, 3]], dim=1)
        same = torch.allclose(target["boxes"], boxes, atol=1e-4)
        flipped = torch.allclose(target["boxes"], mirrored, atol=1e-4)
        assert same or flipped
        flips.add(flipped and not same)
    assert flips == {False, True}


def test_ssd_augment_keeps_boxes_valid(shapes):
    torch.manual_seed(0)
    dataset = DetectionDataset(voc_detection(shapes, "train"), ssd_augment=True)
    for index in range(6):
        image, target = dataset[(64, 64, index)]
        boxes = target["boxes"]
        assert image.shape == (3, 64, 64) and len(boxes) == len(target["labels"]) == len(target["iscrowd"])
        assert (boxes >= 0).all() and (boxes <= 64).all() and (boxes[:, 2:] - boxes[:, :2] >= 1).all()


def test_eval_boxes_map_back_to_the_original_image(shapes):
    raw = voc_detection(shapes, "val")
    dataset = DetectionEvalDataset(raw, (64, 64))
    for index in range(len(raw)):
        image, target = dataset[index]
        assert image.shape == (3, 64, 64)
        back = rescale_boxes(target["boxes"], (64, 64), target["orig_size"])
        assert torch.allclose(back, raw[index][1]["boxes"], atol=1e-4)


def test_unreadable_image_is_skipped_and_counted_unless_strict(fresh, caplog):
    (fresh / "coco" / "images" / "train" / "000001.jpg").write_bytes(b"not a jpeg")
    dataset = coco_detection(fresh, "train")
    with caplog.at_level(logging.WARNING):
        images, targets, skipped = collate_detection([DetectionDataset(dataset)[(32, 32, i)] for i in range(2)])
    assert images.shape == (1, 3, 32, 32) and len(targets) == 1 and skipped == 1 and "000001.jpg" in caplog.text
    with pytest.raises(UnreadableImageError, match="000001.jpg"):
        DetectionDataset(dataset, strict=True)[(32, 32, 1)]
    with pytest.raises(UnreadableImageError):
        DetectionEvalDataset(dataset, (32, 32))[1]
    assert collate_detection([None, None])[2] == 2


def test_multiscale_sampler_batches(shapes):
    dataset = DetectionDataset(detection_dataset(shapes, "train"))
    sampler = MultiScaleBatchSampler(len(dataset), base_size=64, base_batch_size=2, min_size=32, max_size=96)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_detection)
    seen = 0
    for images, targets, skipped in loader:
        size = images.shape[-1]
        assert images.shape[1:] == (3, size, size) and len(targets) == len(images) and skipped == 0
        assert all(tuple(t["boxes"].canvas_size) == (size, size) for t in targets)
        seen += len(images)
    assert seen == len(dataset)
