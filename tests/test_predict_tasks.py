"""``mobilevit predict`` for segmentation and detection models: the PNGs and JSON it writes, bad files,
the task check, and agreement with the models themselves and with the ONNX Runtime backend."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from mobilevit import create_model
from mobilevit.cli import main
from mobilevit.data.segmentation import VOC_PALETTE, segmentation_eval_transform
from mobilevit.models.factory import from_pretrained
from mobilevit.predict import predict
from mobilevit.tasks import class_names
from mobilevit.tasks.segmentation import overlay
from mobilevit.testing import randomize_

skimage_data = pytest.importorskip("skimage.data")

SEG_LABELS = ["background", "sky", "road", "tree"]
DET_LABELS = ["background", "cat", "dog"]
SEG_SIZE = 64  # a small input keeps the tests fast


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, str]:
    """A square PNG, a landscape JPEG, the same stem in another folder, a truncated JPEG, a missing path."""
    root = tmp_path_factory.mktemp("photos")
    (root / "other").mkdir()
    Image.fromarray(skimage_data.astronaut()[::4, ::4]).save(root / "astronaut.png")  # 128 x 128
    Image.fromarray(skimage_data.chelsea()).save(root / "chelsea.jpg")  # 451 x 300
    Image.fromarray(skimage_data.coffee()[::4, ::4]).save(root / "other" / "chelsea.png")
    (root / "truncated.jpg").write_bytes((root / "chelsea.jpg").read_bytes()[:2000])
    names = {"astronaut": "astronaut.png", "chelsea": "chelsea.jpg", "same_stem": "other/chelsea.png"}
    paths = {key: str(root / name) for key, name in names.items()}
    return paths | {"truncated": str(root / "truncated.jpg"), "missing": str(root / "missing.png")}


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory) -> Path:
    model = randomize_(create_model("deeplabv3_mobilevit_xxs", num_classes=len(SEG_LABELS)))
    model.pretrained_cfg.update(label_names=SEG_LABELS, input_size=(3, SEG_SIZE, SEG_SIZE))
    return model.save_pretrained(tmp_path_factory.mktemp("seg") / "model")


def spread_class_logits(model: nn.Module, factor: float = 10.0) -> nn.Module:
    """Scale the class logits of a freshly initialised detector: its scores then spread out instead of
    sitting near 1/K, so a score threshold keeps some boxes and runtimes agree on their order."""
    with torch.no_grad():
        for predictor in model.head.predictors:
            conv = predictor.loc_cls if isinstance(predictor.loc_cls, nn.Conv2d) else predictor.loc_cls.pw_conv
            conv.weight.view(-1, 4 + model.num_classes, *conv.weight.shape[1:])[:, 4:] *= factor
    return model


@pytest.fixture(scope="module")
def det_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = spread_class_logits(create_model("ssdlite_mobilevit_xxs", num_classes=len(DET_LABELS)))
    model.pretrained_cfg["label_names"] = DET_LABELS
    return model.save_pretrained(tmp_path_factory.mktemp("det") / "model")


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_segmentation_writes_mask_overlay_and_json(capsys, photos, seg_dir, tmp_path):
    images = [photos[k] for k in ("astronaut", "chelsea", "same_stem")]
    code, out, err = run_cli(capsys, *images, "--checkpoint", str(seg_dir), "--output-dir", str(tmp_path), "--json")
    assert code == 0 and not err
    report = json.loads(out)
    assert report["task"] == "segmentation" and report["errors"] == []
    assert [r["image"] for r in report["results"]] == images
    stems = [Path(r["mask_png"]).name for r in report["results"]]
    assert stems == ["astronaut_mask.png", "chelsea_mask.png", "chelsea_2_mask.png"]  # nothing overwritten
    for result in report["results"]:
        photo = Image.open(result["image"])
        mask = Image.open(result["mask_png"])
        assert mask.mode == "P" and mask.size == photo.size
        assert np.array_equal(np.array(mask.getpalette()).reshape(-1, 3), VOC_PALETTE)
        ids = np.asarray(mask)
        assert ids.max() < len(SEG_LABELS)
        tinted = Image.open(result["overlay_png"])
        assert tinted.mode == "RGB" and tinted.size == photo.size
        classes = result["classes"]
        assert [c["label"] for c in classes] == [SEG_LABELS[c["index"]] for c in classes]
        fractions = [c["fraction"] for c in classes]
        assert fractions == sorted(fractions, reverse=True) and sum(fractions) == pytest.approx(1)
        assert {c["index"]: c["fraction"] for c in classes} == pytest.approx(
            {i: (ids == i).mean() for i in np.unique(ids)}
        )


def test_segmentation_mask_is_the_models_prediction(photos, seg_dir, tmp_path):
    """The image is resized as evaluation resizes it, and the logits are upsampled to the photo."""
    model = from_pretrained(seg_dir).eval()
    (result,), _ = predict([photos["chelsea"]], model, SEG_LABELS, output_dir=tmp_path)
    photo = Image.open(photos["chelsea"])
    x = segmentation_eval_transform(SEG_SIZE, SEG_SIZE)(photo)
    with torch.no_grad():
        logits = model(x[None])
    logits = nn.functional.interpolate(logits, size=(photo.height, photo.width), mode="bilinear")
    assert np.array_equal(np.asarray(Image.open(result["mask_png"])), logits[0].argmax(0).numpy())


def test_overlay_tints_objects_and_keeps_the_background():
    pixels = np.full((1, 3, 3), 200, np.uint8)
    ids = np.array([[0, 1, 2]], np.uint8)
    out = overlay(pixels, ids, alpha=0.5)
    assert out[0, 0].tolist() == [200, 200, 200]
    assert out[0, 1].tolist() == [164, 100, 100]  # halfway to VOC's class 1, (128, 0, 0)
    assert out[0, 2].tolist() == [100, 164, 100]  # class 2, (0, 128, 0)


def test_detection_writes_boxes_png_and_json(capsys, photos, det_dir, tmp_path):
    images = [photos["astronaut"], photos["chelsea"]]
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
            assert 1 <= d["index"] < len(DET_LABELS) and d["label"] == DET_LABELS[d["index"]]
            assert d["score"] > 0.5
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 <= x2 <= photo.width and 0 <= y1 <= y2 <= photo.height
        assert not np.array_equal(np.asarray(drawn), np.asarray(photo.convert("RGB")))  # boxes were drawn
    code, out, _ = run_cli(capsys, *argv[1:])  # the table, for one image
    assert code == 0 and "_boxes.png" in out and ("cat" in out or "dog" in out)


def test_detections_are_the_models_own(photos, det_dir, tmp_path):
    """Raw predictions + NMS in predict give what the torchvision model gives on the image resized as
    detection_eval_transform resizes it, with boxes scaled back to the photo (451 x 300: x and y scale
    differently)."""
    model = from_pretrained(det_dir).eval()
    (result,), _ = predict([photos["chelsea"]], model, DET_LABELS, output_dir=tmp_path, score_thresh=0.45)
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


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_unreadable_images_are_reported_and_the_others_processed(capsys, photos, seg_dir, det_dir, tmp_path, task):
    model_dir = seg_dir if task == "segmentation" else det_dir
    images = [photos["truncated"], photos["astronaut"], photos["missing"]]
    code, out, err = run_cli(capsys, *images, "--checkpoint", str(model_dir), "--output-dir", str(tmp_path), "--json")
    assert code == 2
    assert "truncated.jpg" in err and "missing.png" in err and "No such file" in err
    report = json.loads(out)
    assert [e["image"] for e in report["errors"]] == [photos["truncated"], photos["missing"]]
    assert [r["image"] for r in report["results"]] == [photos["astronaut"]]
    written = sorted(p.name for p in tmp_path.iterdir())
    expected = ["astronaut_mask.png", "astronaut_overlay.png"] if task == "segmentation" else ["astronaut_boxes.png"]
    assert written == expected


def test_task_mismatch_is_an_error(capsys, photos, seg_dir):
    code, out, err = run_cli(capsys, photos["astronaut"], "--checkpoint", str(seg_dir), "--task", "detection")
    assert code == 2 and not out
    assert "--task detection, but" in err and "holds a segmentation model (deeplabv3_mobilevit_xxs)" in err


def test_bad_score_threshold_is_refused(photos, det_dir, tmp_path):
    with pytest.raises(ValueError, match=r"probability in \[0, 1\)"):
        predict([photos["astronaut"]], from_pretrained(det_dir), DET_LABELS, output_dir=tmp_path, score_thresh=1.5)


def test_default_class_names_of_task_models():
    seg = create_model("deeplabv3_mobilevit_xxs")  # 21 classes: VOC's
    assert class_names(seg)[:3] == ["background", "aeroplane", "bicycle"] and len(class_names(seg)) == 21
    det = create_model("ssdlite_mobilevit_xxs")  # 81 classes: COCO's, contiguous
    names = class_names(det)
    assert names[:3] == ["background", "person", "bicycle"] and names[80] == "toothbrush" and len(names) == 81
    assert class_names(create_model("deeplabv3_mobilevit_xxs", num_classes=3)) == ["background", "class_1", "class_2"]


def test_segmentation_with_onnxruntime_gives_the_eager_mask(capsys, photos, seg_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    images = [photos["astronaut"], photos["missing"], photos["chelsea"]]
    masks = {}
    for backend in ("eager", "onnxruntime"):
        argv = [*images, "--checkpoint", str(seg_dir), "--output-dir", str(tmp_path / backend), "--json"]
        code, out, _ = run_cli(capsys, *argv, "--backend", backend)
        report = json.loads(out)
        assert code == 2 and len(report["errors"]) == 1
        masks[backend] = [np.asarray(Image.open(r["mask_png"])) for r in report["results"]]
    for eager, onnx in zip(masks["eager"], masks["onnxruntime"], strict=True):
        assert (eager == onnx).mean() > 0.999  # only near-ties of two classes may flip


def test_detection_with_onnxruntime_gives_the_eager_boxes(photos, det_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    model = from_pretrained(det_dir).eval()
    images = [photos["astronaut"], photos["chelsea"]]
    eager, _ = predict(images, model, DET_LABELS, output_dir=tmp_path / "eager")
    onnx, _ = predict(images, model, DET_LABELS, output_dir=tmp_path / "onnx", backend="onnxruntime")
    for a, b in zip(eager, onnx, strict=True):
        assert [d["index"] for d in a["detections"]] == [d["index"] for d in b["detections"]]
        torch.testing.assert_close(
            torch.tensor([d["box"] for d in a["detections"]]), torch.tensor([d["box"] for d in b["detections"]])
        )
