"""The segmentation task (mobilevit.tasks.segmentation): mIoU against torchmetrics' MulticlassJaccardIndex
and by hand, the loss, and prediction: the mask and overlay PNGs and the JSON ``mobilevit predict``
writes, agreement with the model itself and with the ONNX Runtime backend."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import mobilevit
from mobilevit.cli import main
from mobilevit.data.segmentation import VOC_PALETTE, segmentation_eval_transform
from mobilevit.models.factory import from_pretrained
from mobilevit.predict import predict
from mobilevit.tasks import get_task
from mobilevit.tasks.segmentation import SegmentationMetrics, overlay


def random_batch(gen, classes_used=4, shape=(2, 16, 20)):
    target = torch.randint(classes_used, shape, generator=gen)
    target[torch.rand(shape, generator=gen) < 0.1] = 255
    preds = torch.where(
        torch.rand(shape, generator=gen) < 0.6, target, torch.randint(classes_used, shape, generator=gen)
    )
    return preds.clamp(max=classes_used - 1), target


def test_miou_matches_torchmetrics_jaccard_index():
    pytest.importorskip("torchmetrics")
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


def test_segmentation_loss_of_a_fully_ignored_batch_is_zero_not_nan():
    model = mobilevit.create_model("deeplabv3_mobilevit_xxs", num_classes=3)
    images = torch.rand(2, 3, 64, 64)
    loss = get_task("segmentation").loss(model, images, torch.full((2, 64, 64), 255), 0.0)
    assert loss.item() == 0.0
    loss.backward()  # still a graph: the training step goes on


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["predict", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_segmentation_writes_mask_overlay_and_json(capsys, photos, seg_dir, seg_labels, tmp_path):
    images = [photos[k] for k in ("small_astronaut", "chelsea", "same_stem")]
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
        assert ids.max() < len(seg_labels)
        tinted = Image.open(result["overlay_png"])
        assert tinted.mode == "RGB" and tinted.size == photo.size
        classes = result["classes"]
        assert [c["label"] for c in classes] == [seg_labels[c["index"]] for c in classes]
        fractions = [c["fraction"] for c in classes]
        assert fractions == sorted(fractions, reverse=True) and sum(fractions) == pytest.approx(1)
        assert {c["index"]: c["fraction"] for c in classes} == pytest.approx(
            {i: (ids == i).mean() for i in np.unique(ids)}
        )


def test_segmentation_mask_is_the_models_prediction(photos, seg_dir, seg_labels, tmp_path):
    """The image is resized as evaluation resizes it, and the logits are upsampled to the photo."""
    model = from_pretrained(seg_dir).eval()
    assert model.pretrained_cfg["input_size"] == (3, 64, 64)  # as seg_dir saved it
    (result,), _ = predict([photos["chelsea"]], model, seg_labels, output_dir=tmp_path)
    photo = Image.open(photos["chelsea"])
    x = segmentation_eval_transform(64, 64)(photo)
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


def test_segmentation_with_onnxruntime_gives_the_eager_mask(capsys, photos, seg_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    images = [photos["small_astronaut"], photos["missing"], photos["chelsea"]]
    masks = {}
    for backend in ("eager", "onnxruntime"):
        argv = [*images, "--checkpoint", str(seg_dir), "--output-dir", str(tmp_path / backend), "--json"]
        code, out, _ = run_cli(capsys, *argv, "--backend", backend)
        report = json.loads(out)
        assert code == 2 and len(report["errors"]) == 1
        masks[backend] = [np.asarray(Image.open(r["mask_png"])) for r in report["results"]]
    for eager, onnx in zip(masks["eager"], masks["onnxruntime"], strict=True):
        assert (eager == onnx).mean() > 0.999  # only near-ties of two classes may flip
