"""The detection task (mobilevit.tasks.detection): box mAP on cases whose answer follows from COCO's
definition, and prediction: the boxes PNG and the JSON ``mobilevit predict`` writes, the score
threshold, agreement with the torchvision model itself and with the ONNX Runtime backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from mobilevit.cli import main
from mobilevit.models.factory import from_pretrained
from mobilevit.predict import predict
from mobilevit.tasks.detection import DetectionMetrics

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def boxes(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def detection_map(preds, targets):
    pytest.importorskip("pycocotools")
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


@pytest.mark.parametrize("rank", [99, 100])
def test_each_image_scores_its_100_best_boxes_without_a_warning(rank, recwarn):
    """150 boxes, scored high to low; the one true box is at ``rank`` (0-based), the rest miss it."""
    true_box = [0, 0, 20, 20]
    rows = [true_box if i == rank else [30 + i % 10, 30, 60 + i % 10, 60] for i in range(150)]
    pred = {
        "boxes": boxes(*rows),
        "scores": torch.linspace(0.99, 0.5, 150),
        "labels": torch.ones(150, dtype=torch.long),
    }
    target = {"boxes": boxes(true_box), "labels": torch.tensor([1])}
    assert detection_map([pred], [target])["mar_100"] == (1.0 if rank < 100 else 0.0)
    assert not [w for w in recwarn if "detections" in str(w.message)]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_detection_writes_boxes_png_and_json(capsys, photos, det_dir, det_labels, tmp_path):
    images = [photos["small_astronaut"], photos["chelsea"]]
    argv = [*images, "--checkpoint", str(det_dir), "--output-dir", str(tmp_path), "--score-thresh", "0.5"]
    code, out, err = run_cli(capsys, *argv, "--json")
    assert code == 0 and not err
    report = json.loads(out)
    assert report["task"] == "detection"
    for result in report["results"]:
        photo = Image.open(result["image"])
        drawn = Image.open(result["boxes_png"])
        assert Path(result["boxes_png"]).name == f"{Path(result['image']).stem}_boxes.png"
        assert drawn.size == photo.size and drawn.mode == "RGB"
        found = result["detections"]
        assert found, "the spread logits give some boxes above 0.5"
        assert [d["score"] for d in found] == sorted((d["score"] for d in found), reverse=True)
        for d in found:
            assert set(d) == {"label", "index", "score", "box"}
            assert 1 <= d["index"] < len(det_labels) and d["label"] == det_labels[d["index"]]
            assert d["score"] > 0.5
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= photo.width and 0 <= y1 <= y2 <= photo.height
        assert not np.array_equal(np.asarray(drawn), np.asarray(photo.convert("RGB")))  # boxes were drawn
    code, out, _ = run_cli(capsys, *argv[1:])  # the table, for one image
    assert code == 0 and "_boxes.png" in out and ("cat" in out or "dog" in out)


def test_detections_are_the_models_own(photos, det_dir, det_labels, tmp_path):
    """Raw predictions + NMS in predict give what the torchvision model gives on the image resized as
    detection_eval_transform resizes it, with boxes scaled back to the photo (451 x 300: x and y scale
    differently)."""
    model = from_pretrained(det_dir).eval()
    (result,), _ = predict([photos["chelsea"]], model, det_labels, output_dir=tmp_path, score_thresh=0.45)
    photo = Image.open(photos["chelsea"])
    x = v2.Compose([v2.ToImage(), v2.Resize((320, 320), antialias=True), v2.ToDtype(torch.float32, scale=True)])(photo)
    with torch.no_grad():
        expected = model([x])[0]
    keep = expected["scores"] > 0.45
    scale = torch.tensor([photo.width / 320, photo.height / 320] * 2)
    found = result["detections"]
    assert [d["index"] for d in found] == expected["labels"][keep].tolist()
    torch.testing.assert_close(torch.tensor([d["box"] for d in found]), expected["boxes"][keep] * scale)
    torch.testing.assert_close(torch.tensor([d["score"] for d in found]), expected["scores"][keep])


def test_bad_score_threshold_is_refused(photos, det_dir, det_labels, tmp_path):
    with pytest.raises(ValueError, match=r"probability in \[0, 1\)"):
        predict(
            [photos["small_astronaut"]], from_pretrained(det_dir), det_labels, output_dir=tmp_path, score_thresh=1.5
        )


def test_detection_with_onnxruntime_gives_the_eager_boxes(photos, det_dir, det_labels, tmp_path):
    pytest.importorskip("onnxruntime")
    model = from_pretrained(det_dir).eval()
    images = [photos["small_astronaut"], photos["chelsea"]]
    eager, _ = predict(images, model, det_labels, output_dir=tmp_path / "eager")
    onnx, _ = predict(images, model, det_labels, output_dir=tmp_path / "onnx", backend="onnxruntime")
    for a, b in zip(eager, onnx, strict=True):
        assert [d["index"] for d in a["detections"]] == [d["index"] for d in b["detections"]]
        torch.testing.assert_close(
            torch.tensor([d["box"] for d in a["detections"]]), torch.tensor([d["box"] for d in b["detections"]])
        )
