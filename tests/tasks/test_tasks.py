"""The tasks (mobilevit.tasks and the Task of tasks/base.py): the readable class names every task gives
a model's outputs (Task.class_names, what predict labels with by default), and which model a task takes
(models.factory.resolve_task_model) and what data it trains on by default."""

from __future__ import annotations

import pytest

from mobilevit import create_model
from mobilevit.engine.config import load_config
from mobilevit.models.factory import resolve_task_model
from mobilevit.tasks import task_for


def class_names(model) -> list[str]:
    return task_for(model).class_names(model)


def test_class_names_fall_back_to_indices():
    model = create_model("mobilevit_xxs", num_classes=3)
    assert class_names(model) == ["class_0", "class_1", "class_2"]
    model.pretrained_cfg["label_names"] = ["x", "y", "z"]
    assert class_names(model) == ["x", "y", "z"]
    model.pretrained_cfg["label_names"] = ["only", "two"]  # does not fit the classifier: not used
    assert class_names(model) == ["class_0", "class_1", "class_2"]


def test_default_class_names_of_task_models():
    seg = create_model("deeplabv3_mobilevit_xxs")  # 21 classes: VOC's
    assert class_names(seg)[:3] == ["background", "aeroplane", "bicycle"] and len(class_names(seg)) == 21
    det = create_model("ssdlite_mobilevit_xxs")  # 81 classes: COCO's, contiguous
    names = class_names(det)
    assert names[:3] == ["background", "person", "bicycle"] and names[80] == "toothbrush" and len(names) == 81
    assert class_names(create_model("deeplabv3_mobilevit_xxs", num_classes=3)) == ["background", "class_1", "class_2"]


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
