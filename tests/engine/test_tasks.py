"""Segmentation and detection through the same engine and CLI as classification: train, resume,
checkpoints, evaluation, and the task/model rules."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import mobilevit
from mobilevit.cli import main
from mobilevit.data.synthetic import SHAPES_CLASSES, make_shapes
from mobilevit.engine.config import load_config
from mobilevit.engine.train import Trainer, train
from mobilevit.models.factory import resolve_task_model
from mobilevit.models.loader import load_checkpoint
from mobilevit.tasks import get_task


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), num_train=24, num_val=8, size=(96, 96))


def tiny(task: str, data, output, **overrides):
    options = dict(
        model="mobilevit_xxs", task=task, data=str(data), output=str(output), epochs=1, img_size=64,
        batch_size=8, multi_scale=False, warmup_steps=1, workers=0, ema_momentum=0.1, label_smoothing=0.0,
    )  # fmt: skip
    return load_config(**{**options, **overrides})


def test_task_picks_the_model_and_rejects_a_mismatch():
    assert resolve_task_model("mobilevit_s", "segmentation") == ("deeplabv3_mobilevit_s", "segmentation")
    assert resolve_task_model("mobilevit_xs", "detection") == ("ssdlite_mobilevit_xs", "detection")
    assert resolve_task_model("ssdlite_mobilevit_xs") == ("ssdlite_mobilevit_xs", "detection")
    with pytest.raises(ValueError, match="deeplabv3_mobilevit_s is a segmentation model; for detection use"):
        resolve_task_model("deeplabv3_mobilevit_s", "detection")
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        resolve_task_model("mobilevit_s", "depth")
    assert load_config(task="segmentation", model="mobilevit_xxs").data == "shapes"
    assert load_config(model="mobilevit_xxs").data == "fashion-mnist"


@pytest.mark.parametrize(("task", "headline"), [("segmentation", "val_miou"), ("detection", "val_map_50")])
def test_trains_checkpoints_and_reloads(shapes, tmp_path, task, headline):
    metrics = train(tiny(task, shapes, tmp_path / "run"))
    assert len(metrics) == 1 and 0.0 <= metrics[0][headline] <= 1.0
    assert math.isfinite(metrics[0]["train_loss"])
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[-1]
    state = torch.load(checkpoint, weights_only=True)
    assert (state["task"], state["num_classes"], state["classes"]) == (task, 3, list(SHAPES_CLASSES))
    model, classes = load_checkpoint(checkpoint)
    assert model.task == task and model.num_classes == 3 and classes == list(SHAPES_CLASSES)
    reloaded = mobilevit.from_pretrained(tmp_path / "run" / "model")
    assert reloaded.model_name == model.model_name
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0


def test_resume_continues_a_segmentation_run(shapes, tmp_path):
    """A second run with --resume auto starts from the first one's last checkpoint, not from scratch."""
    train(tiny("segmentation", shapes, tmp_path / "run"))
    trainer = Trainer(tiny("segmentation", shapes, tmp_path / "run", epochs=2, resume="auto"))
    trainer.fit()
    assert [m["epoch"] for m in trainer.metrics] == [1, 2]
    assert trainer.step == 2 * len(trainer.sampler)


def test_eval_cli_reports_miou_and_map(shapes, tmp_path, capsys):
    for task, key in (("segmentation", "miou"), ("detection", "map_50")):
        train(tiny(task, shapes, tmp_path / task))
        args = ["eval", "--checkpoint", str(tmp_path / task / "model"), "--data", str(shapes), "--json"]
        assert main(args) == 0
        captured = capsys.readouterr()
        assert captured.out.lstrip().startswith("{"), (captured.out[:500], captured.err[-2000:])
        report = json.loads(captured.out)
        assert report["task"] == task and report["images"] == 8 and 0.0 <= report[key] <= 1.0
    assert main(["eval", "--checkpoint", str(tmp_path / "detection" / "model"), "--task", "segmentation"]) == 2
    assert "holds a detection model" in capsys.readouterr().err


def test_segmentation_loss_of_a_fully_ignored_batch_is_zero_not_nan():
    model = mobilevit.create_model("deeplabv3_mobilevit_xxs", num_classes=3)
    images = torch.rand(2, 3, 64, 64)
    loss = get_task("segmentation").loss(model, images, torch.full((2, 64, 64), 255), 0.0)
    assert loss.item() == 0.0
    loss.backward()  # still a graph: the training step goes on


def test_detection_images_without_objects_train(tmp_path):
    data = make_shapes(tmp_path / "empty", num_train=8, num_val=4, size=(64, 64), p_empty=1.0)
    metrics = train(tiny("detection", data, tmp_path / "run", batch_size=4))
    assert math.isfinite(metrics[0]["train_loss"])


def test_a_segmentation_backbone_initialises_a_detector(tmp_path):
    """The shapes recipe's second stage: a DeepLabv3 checkpoint's backbone into an SSDLite."""
    seg = mobilevit.create_model("deeplabv3_mobilevit_xxs", num_classes=3)
    path = seg.save_pretrained(tmp_path / "seg") / "model.safetensors"
    det = mobilevit.create_model("ssdlite_mobilevit_xxs", num_classes=3, pretrained=path)
    for key, value in seg.backbone.state_dict().items():
        assert torch.equal(det.backbone.body.state_dict()[key], value), key


@pytest.mark.slow
def test_shapes_recipes_learn_segmentation_then_detection(tmp_path, monkeypatch):
    """The README's figures: DeepLabv3 from scratch reaches mIoU >= 0.7, then SSDLite on its backbone
    mAP@0.5 >= 0.5, on the built-in synthetic shapes (about 2 + 2 minutes on 2 CPU cores)."""
    monkeypatch.chdir(tmp_path)  # the detection recipe reads runs/shapes_segmentation/model/
    configs = Path(__file__).parents[2] / "configs"
    seg = train(load_config(configs / "shapes_segmentation.yaml"))
    print("segmentation mIoU per epoch:", [round(m["val_miou"], 4) for m in seg])
    assert seg[-1]["val_miou"] >= 0.7
    det = train(load_config(configs / "shapes_detection.yaml"))
    print("detection mAP@0.5 per epoch:", [round(m["val_map_50"], 4) for m in det])
    assert det[-1]["val_map_50"] >= 0.5
