"""mIoU against torchmetrics' MulticlassJaccardIndex and by hand; box mAP on cases whose answer
follows from COCO's definition."""

from __future__ import annotations

import math

import pytest
import torch

from mobilevit.tasks.detection import DetectionMetrics
from mobilevit.tasks.segmentation import SegmentationMetrics

torchmetrics = pytest.importorskip("torchmetrics")
pytest.importorskip("pycocotools")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def random_batch(gen, classes_used=4, shape=(2, 16, 20)):
    target = torch.randint(classes_used, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < 0.1] = 255
    preds = torch.where(
        torch.rand(shape, generator=gen) < 0.6, target, torch.randint(classes_used, shape, generator=gen)
    )
    return preds.clamp(max=classes_used - 1), target


def test_miou_matches_torchmetrics_jaccard_index():
    from torchmetrics.classification import MulticlassJaccardIndex

    gen = torch.Generator().manual_seed(0)
    ours = SegmentationMetrics(num_classes=6)  # classes 4 and 5 appear in neither target nor prediction
    macro = MulticlassJaccardIndex(num_classes=6, average="macro", ignore_index=255)
    per_class = MulticlassJaccardIndex(num_classes=6, average="none", ignore_index=255)
    for _ in range(3):
        preds, target = random_batch(gen)
        ours.update(preds, target)
        macro.update(preds, target)
        per_class.update(preds, target)
    result = ours.compute()
    assert result["miou"] == pytest.approx(macro.compute().item(), abs=1e-6)
    assert result["per_class_iou"][:4] == pytest.approx(per_class.compute()[:4].tolist(), abs=1e-6)
    assert all(math.isnan(v) for v in result["per_class_iou"][4:])


def test_logits_are_reduced_by_argmax():
    gen = torch.Generator().manual_seed(1)
    preds, target = random_batch(gen)
    logits = torch.nn.functional.one_hot(preds, 4).permute(0, 3, 1, 2).float() + 0.1 * torch.rand(2, 4, 16, 20)
    from_ids, from_logits = SegmentationMetrics(4), SegmentationMetrics(4)
    from_ids.update(preds, target)
    from_logits.update(logits, target)
    assert torch.equal(from_ids.confusion, from_logits.confusion)


def test_hand_computed_example():
    metrics = SegmentationMetrics(num_classes=3)
    target = torch.tensor([[[0, 0], [1, 255]]])
    preds = torch.tensor([[[0, 1], [1, 2]]])  # the 2 falls on an ignored pixel: class 2 is absent
    metrics.update(preds, target)
    result = metrics.compute()
    assert result["per_class_iou"][:2] == [0.5, 0.5] and math.isnan(result["per_class_iou"][2])
    assert result["miou"] == 0.5 and result["pixel_acc"] == pytest.approx(2 / 3)
    metrics.reset()
    assert math.isnan(metrics.compute()["miou"])


def test_unknown_target_ids_are_an_error():
    with pytest.raises(ValueError, match=r"ids \[7\] outside \[0, 3\).*ignore index 255"):
        SegmentationMetrics(3).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [1, 255]]]))
    with pytest.raises(ValueError, match="differ in shape"):
        SegmentationMetrics(3).update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def detection_map(preds, targets):
    metrics = DetectionMetrics()
    metrics.update(preds, targets)
    return metrics.compute()


GT = {"boxes": boxes([10, 10, 50, 50], [60, 20, 90, 80]), "labels": torch.tensor([1, 2])}


def test_perfect_predictions_score_one():
    result = detection_map([{**GT, "scores": torch.tensor([0.9, 0.8])}], [GT])
    assert result["map"] == result["map_50"] == result["map_75"] == result["mar_100"] == 1.0
    assert all(isinstance(v, float) for v in result.values())


def test_wrong_labels_score_zero():
    pred = {"boxes": GT["boxes"], "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([2, 1])}
    assert detection_map([pred], [GT])["map"] == 0.0


def test_one_of_two_objects_found():
    target = {"boxes": boxes([10, 10, 50, 50], [60, 20, 90, 80]), "labels": torch.tensor([1, 1])}
    pred = {"boxes": boxes([10, 10, 50, 50]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    result = detection_map([pred], [target])
    # precision 1 up to recall 0.5, nothing beyond: 51 of COCO's 101 recall points
    assert result["map_50"] == pytest.approx(51 / 101) and result["map"] == pytest.approx(51 / 101)
    assert result["mar_100"] == 0.5


def test_iou_between_thresholds():
    target = {"boxes": boxes([0, 0, 100, 100]), "labels": torch.tensor([1])}
    pred = {"boxes": boxes([0, 0, 100, 62]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    result = detection_map([pred], [target])  # IoU 0.62: a hit at 0.50, 0.55 and 0.60, a miss from 0.65 on
    assert result["map_50"] == 1.0 and result["map_75"] == 0.0 and result["map"] == pytest.approx(0.3)


def test_crowd_boxes_are_not_missed_objects():
    from torchvision import tv_tensors

    target = {
        "boxes": tv_tensors.BoundingBoxes(GT["boxes"], format="XYXY", canvas_size=(100, 100)),
        "labels": torch.tensor([1, 1]),
        "iscrowd": torch.tensor([0, 1]),
        "image_id": 3,
        "orig_size": (100, 100),
    }
    pred = {"boxes": boxes([10, 10, 50, 50]), "scores": torch.tensor([0.9]), "labels": torch.tensor([1])}
    assert detection_map([pred], [target])["map"] == 1.0
