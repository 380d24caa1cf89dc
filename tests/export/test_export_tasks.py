"""Exports of segmentation and detection models: ONNX parity (dynamic sizes for segmentation; raw
predictions + Python NMS for detection, against the eager torchvision model), the CLI, other formats
and the errors for what a task model cannot be exported as."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch
from torch import nn

from mobilevit import create_model
from mobilevit.cli import main
from mobilevit.export import FP32_TOLERANCE, export
from mobilevit.models.detection import postprocess
from mobilevit.tasks import get_task
from mobilevit.testing import randomize_, structured_images

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx

from mobilevit.export.onnx import OnnxRunner


@pytest.fixture(scope="module")
def segmenter() -> nn.Module:
    return randomize_(create_model("deeplabv3_mobilevit_xxs", num_classes=5)).eval()


@pytest.fixture(scope="module")
def detector() -> nn.Module:
    """A fresh 3-class detector with its class logits scaled up: the scores spread out, so its
    detections are not near-ties that fp32 rounding could reorder."""
    torch.manual_seed(0)
    model = create_model("ssdlite_mobilevit_xxs", num_classes=3).eval()
    with torch.no_grad():
        for predictor in model.head.predictors:
            conv = predictor.loc_cls if isinstance(predictor.loc_cls, nn.Conv2d) else predictor.loc_cls.pw_conv
            conv.weight.view(-1, 4 + model.num_classes, *conv.weight.shape[1:])[:, 4:] *= 10
    return model


@pytest.fixture(scope="module")
def segmentation_onnx(segmenter, tmp_path_factory):
    return export(segmenter, "onnx", tmp_path_factory.mktemp("seg") / "seg.onnx", img_size=(64, 96), dynamic=True)


def test_segmentation_onnx_matches_at_sizes_not_seen_at_export(segmenter, segmentation_onnx):
    assert segmentation_onnx.max_abs_diff <= FP32_TOLERANCE
    run = OnnxRunner(segmentation_onnx.path)
    for shape in [(2, 100, 150), (1, 97, 130)]:
        x = structured_images(*shape, seed=5)
        with torch.no_grad():
            expected = segmenter(x)
        logits = run(x)
        assert logits.shape == (shape[0], 5, *shape[1:])
        torch.testing.assert_close(logits, expected, rtol=0, atol=FP32_TOLERANCE)


def test_segmentation_torchscript_runs_at_any_size(segmenter, tmp_path):
    from mobilevit.export.torchscript import run_torchscript

    report = export(segmenter, "torchscript", tmp_path / "seg.pt", img_size=(64, 64))
    assert report.max_abs_diff <= FP32_TOLERANCE
    x = structured_images(2, 96, 80, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(run_torchscript(report.path, x), segmenter(x), rtol=0, atol=FP32_TOLERANCE)


@pytest.fixture(scope="module")
def detection_cli(detector, tmp_path_factory) -> tuple[int, str, str]:
    """``mobilevit export`` of the detector from a model directory: (exit code, stdout, ONNX path)."""
    root = tmp_path_factory.mktemp("det")
    model_dir = detector.save_pretrained(root / "model")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["export", "--checkpoint", str(model_dir), "--format", "onnx", "-o", str(root / "det.onnx")])
    return code, out.getvalue(), str(root / "det.onnx")


def test_detection_cli_export_is_checked_and_says_where_nms_runs(detection_cli):
    code, out, path = detection_cli
    assert code == 0
    assert "exported ssdlite_mobilevit_xxs at 320x320" in out
    assert "NMS is not in the graph" in out and "mobilevit.models.detection.postprocess" in out
    diff = float(out.split("max abs diff vs PyTorch: ")[1].split()[0])
    assert diff <= FP32_TOLERANCE
    proto = onnx.load(path)
    assert [o.name for o in proto.graph.output] == ["boxes", "scores"]
    assert "NonMaxSuppression" not in {n.op_type for n in proto.graph.node}


@pytest.mark.parametrize("seed", [0, 1])
def test_detection_onnx_and_postprocess_give_the_eager_detections(detector, detection_cli, seed):
    x = structured_images(1, 320, 320, seed=seed)
    boxes, scores = OnnxRunner(detection_cli[2])(x)
    assert boxes.shape == (1, scores.shape[1], 4) and scores.shape[2] == 3
    (found,) = postprocess(boxes, scores)  # the models' default options: score > 0.01, NMS at 0.5, 200 kept
    with torch.no_grad():
        (expected,) = detector(list(x))
    assert len(expected["labels"]) > 10
    assert torch.equal(found["labels"], expected["labels"])
    torch.testing.assert_close(found["boxes"], expected["boxes"], rtol=0, atol=1e-3)
    torch.testing.assert_close(found["scores"], expected["scores"], rtol=0, atol=1e-5)


def test_postprocess_options_are_the_models(detector):
    """For a detector built with other options, postprocess with them gives its detections too."""
    options = {"score_thresh": 0.4, "nms_thresh": 0.3, "detections_per_img": 7, "topk_candidates": 20}
    model = create_model("ssdlite_mobilevit_xxs", num_classes=3, **options).eval()
    model.load_state_dict(detector.state_dict())
    x = structured_images(2, 320, 320, seed=3)
    with torch.no_grad():
        expected = model(list(x))
        found = postprocess(*get_task("detection").deployable(model)(x), **options)
    for f, e in zip(found, expected, strict=True):
        assert len(f["labels"]) == 7 and torch.equal(f["labels"], e["labels"])
        torch.testing.assert_close(f["boxes"], e["boxes"])


@pytest.mark.parametrize(
    ("model_name", "kwargs", "message"),
    [
        ("deeplabv3_mobilevit_xxs", {"fmt": "coreml"}, "coreml export does not support segmentation models; use onnx"),
        ("ssdlite_mobilevit_xxs", {"fmt": "coreml"}, "does not support detection models; use onnx, torchscript"),
        ("deeplabv3_mobilevit_xxs", {"fmt": "onnx", "int8": True}, "int8 export is for classifiers only"),
        ("ssdlite_mobilevit_xxs", {"fmt": "onnx", "dynamic": True}, "a detection export has a fixed 320x320 input"),
        ("ssdlite_mobilevit_xxs", {"fmt": "onnx", "img_size": (256, 256)}, "detects on 320x320 inputs"),
    ],
)
def test_what_task_models_cannot_be_exported_as(tmp_path, model_name, kwargs, message):
    kwargs = {"img_size": (320, 320), **kwargs}
    with pytest.raises(ValueError, match=message):
        export(create_model(model_name, num_classes=3), path=tmp_path / "m", **kwargs)


def test_cli_refuses_int8_for_a_task_model_before_wanting_calibration(capsys, tmp_path):
    argv = ["export", "--model", "deeplabv3_mobilevit_xxs", "--format", "onnx", "--int8", "-o", str(tmp_path / "m")]
    assert main(argv) == 2
    assert "int8 export is for classifiers only; export the segmentation model in fp32" in capsys.readouterr().err


@pytest.mark.slow  # ExecuTorch lowering and the detector's trace: about a minute
@pytest.mark.parametrize(
    ("task", "fmt"), [("segmentation", "executorch"), ("detection", "torchscript"), ("detection", "executorch")]
)
def test_other_formats_of_task_models(segmenter, detector, tmp_path, task, fmt):
    if fmt == "executorch":
        pytest.importorskip("executorch")
    assert fmt in get_task(task).export_formats
    model, size = (segmenter, (64, 64)) if task == "segmentation" else (detector, (320, 320))
    report = export(model, fmt, tmp_path / f"m.{fmt}", img_size=size)
    assert report.max_abs_diff <= FP32_TOLERANCE
