"""``mobilevit.export.export`` (mobilevit/export/__init__.py) and ``mobilevit export``, its command
line: argument checks, the parity check that guards every export (fp32, and fp16's tolerance and
top-1 agreement), the formats of task models
(segmentation and detection: ONNX parity at sizes the export never saw, raw predictions + Python NMS
for detection) and what they cannot be exported as, and the command as a user runs it (checkpoints,
default sizes, printed checks and errors). Each format's own exporter is tested in test_<format>.py."""

from __future__ import annotations

import contextlib
import copy
import io
import re
import sys

import pytest
import torch
from PIL import Image
from torch import nn

import mobilevit.export as mexport
from mobilevit import create_model
from mobilevit.cli import main
from mobilevit.export import FP16_TOLERANCE, FP32_TOLERANCE, ExportCheckError, export
from mobilevit.export.onnx import OnnxRunner
from mobilevit.models.detection import postprocess
from mobilevit.tasks import get_task
from mobilevit.testing import randomize_, structured_images


def require_onnx() -> None:
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "tflite"}, "unknown export format 'tflite'; choose one of onnx, torchscript, executorch, coreml"),
        ({"fmt": "executorch", "dynamic": True}, "dynamic shapes are not supported for executorch"),
        ({"fmt": "onnx", "int8": True}, "int8 export needs calibration images"),
        (
            {"fmt": "onnx", "int8": True, "calibration": structured_images(2, 64, 64)},
            r"calibration images are \(64, 64\), the export is \(128, 128\)",
        ),
        ({"fmt": "onnx", "precision": "bf16"}, "unknown precision 'bf16'; choose one of fp32, fp16"),
        ({"fmt": "torchscript", "precision": "fp16"}, "fp16 is not supported for torchscript; use one of onnx, coreml"),
        ({"fmt": "executorch", "precision": "fp16"}, "fp16 is not supported for executorch"),
        (
            {"fmt": "onnx", "precision": "fp16", "int8": True, "calibration": structured_images(2, 128, 128)},
            "fp16 and int8 cannot be combined",
        ),
    ],
)
def test_bad_arguments_are_refused(model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export(model, path=tmp_path / "m", img_size=(128, 128), **kwargs)


def test_a_file_that_differs_from_pytorch_is_an_error(model, tmp_path, monkeypatch):
    monkeypatch.setattr(mexport, "_export", lambda model, *args: lambda x: model(x) + 1e-3)
    with pytest.raises(ExportCheckError, match=r"max abs difference 0.001 > 0.0001 .* kept for inspection"):
        export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64))


@pytest.mark.parametrize(("scale", "fails"), [(1.04, False), (1.06, True)])
def test_fp16_is_held_to_a_share_of_the_largest_logit(model, tmp_path, monkeypatch, scale, fails):
    """Logits off by 4% of their size pass, by 6% fail: the bound is 5% of the largest (above 1)."""
    monkeypatch.setattr(mexport, "_export", lambda model, *args: lambda x: model(x) * scale)
    with torch.no_grad():
        largest = model(structured_images(8, 64, 64, seed=1)).abs().max().item()  # export's check images
    assert largest > 1
    if fails:
        message = r"\(onnx, fp16\) does not match PyTorch: .* \(0.05 of the largest PyTorch output, .*\) on inputs"
        with pytest.raises(ExportCheckError, match=message):
            export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64), precision="fp16")
    else:
        report = export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64), precision="fp16")
        assert report.tolerance == pytest.approx(FP16_TOLERANCE * largest, rel=1e-4)
        assert report.max_abs_diff == pytest.approx((scale - 1) * largest, rel=1e-3)
        assert report.top1_agreement == 1


def test_fp16_reports_a_near_tie_that_swaps_without_failing(model, tmp_path, monkeypatch):
    """Within the tolerance, top-1 can only change where PyTorch's two best logits nearly tie: the
    agreement says so, and the file passes."""
    images = structured_images(8, 64, 64, seed=1)  # export's check images
    tied = copy.deepcopy(model)
    with torch.no_grad():
        best, runner_up = model(images[:1])[0].topk(2).indices.tolist()
        logits = model(images[:1])[0]
        tied.get_classifier().bias[runner_up] += logits[best] - logits[runner_up] - 0.01  # 0.01 behind

    def run(exported):
        def swap_first(x):
            out = exported(x)
            if torch.equal(x, images[:1]):
                out[0, runner_up] += 0.02  # now 0.01 ahead
            return out

        return swap_first

    monkeypatch.setattr(mexport, "_export", lambda exported, *args: run(exported))
    report = export(tied, "onnx", tmp_path / "m.onnx", img_size=(64, 64), precision="fp16")
    assert report.top1_agreement == 7 / 8
    assert report.max_abs_diff == pytest.approx(0.02, rel=1e-3)


def test_int8_reports_top1_agreement_not_a_tolerance(model, tmp_path, monkeypatch):
    calibration = structured_images(4, 64, 64)

    def run(x):  # a "quantized" model that gets the first calibration image wrong
        return -model(x) if torch.equal(x, calibration[:1]) else model(x)

    monkeypatch.setattr(mexport, "_export", lambda *args: run)
    report = export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64), int8=True, calibration=calibration)
    assert report.top1_agreement == 0.75


def test_the_callers_model_is_left_alone(model, tmp_path, monkeypatch):
    def vandal(exported, *args):  # an exporter that changes the model it is given
        exported.get_classifier().weight.data.zero_()
        return exported

    monkeypatch.setattr(mexport, "_export", vandal)
    weight = model.get_classifier().weight.clone()
    model.train()
    try:
        export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64))
        assert model.training
        assert torch.equal(model.get_classifier().weight, weight)
    finally:
        model.eval()


@pytest.mark.slow
def test_executorch_int8_is_wired_through(model, tmp_path):
    """int8 through ``export()`` reports a top-1 agreement; the quality of ExecuTorch's int8 is tested
    with its exporter, and fp32 ExecuTorch exports of every family in test_executorch.py."""
    pytest.importorskip("executorch")
    calibration = structured_images(8, 64, 64, seed=3)
    report = export(model, "executorch", tmp_path / "m.pte", img_size=(64, 64), int8=True, calibration=calibration)
    assert report.path.is_file()
    assert 0 <= report.top1_agreement <= 1


# task models: segmentation and detection


@pytest.fixture(scope="module")
def segmenter() -> nn.Module:
    return randomize_(create_model("deeplabv3_mobilevit_xxs", num_classes=5)).eval()


@pytest.fixture(scope="module")
def segmentation_onnx(segmenter, tmp_path_factory):
    require_onnx()
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


def test_segmentation_fp16_is_checked_per_pixel(segmenter, tmp_path):
    require_onnx()
    report = export(segmenter, "onnx", tmp_path / "seg16.onnx", img_size=(64, 64), precision="fp16")
    with torch.no_grad():
        largest = segmenter(structured_images(8, 64, 64, seed=1)).abs().max().item()
    assert report.tolerance == pytest.approx(FP16_TOLERANCE * largest, rel=1e-4)
    assert FP32_TOLERANCE < report.max_abs_diff <= report.tolerance
    assert 0.99 <= report.top1_agreement <= 1  # a pixel where two classes nearly tie may swap


def test_segmentation_torchscript_runs_at_any_size(segmenter, tmp_path):
    from mobilevit.export.torchscript import TorchScriptRunner

    report = export(segmenter, "torchscript", tmp_path / "seg.pt", img_size=(64, 64))
    assert report.max_abs_diff <= FP32_TOLERANCE
    x = structured_images(2, 96, 80, seed=6)
    with torch.no_grad():
        torch.testing.assert_close(TorchScriptRunner(report.path)(x), segmenter(x), rtol=0, atol=FP32_TOLERANCE)


@pytest.fixture(scope="module")
def detection_cli(detector, tmp_path_factory) -> tuple[int, str, str]:
    """``mobilevit export`` of the detector from a model directory: (exit code, stdout, ONNX path)."""
    require_onnx()
    root = tmp_path_factory.mktemp("det")
    model_dir = detector.save_pretrained(root / "model")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["export", "--checkpoint", str(model_dir), "--format", "onnx", "-o", str(root / "det.onnx")])
    return code, out.getvalue(), str(root / "det.onnx")


def test_detection_cli_export_is_checked_and_says_where_nms_runs(detection_cli):
    import onnx

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
        ("deeplabv3_mobilevit_xxs", {"fmt": "onnx", "int8": True}, "int8 export is for classifiers only"),
        ("ssdlite_mobilevit_xxs", {"fmt": "onnx", "dynamic": True}, "a detection export has a fixed 320x320 input"),
        ("ssdlite_mobilevit_xxs", {"fmt": "onnx", "img_size": (256, 256)}, "detects on 320x320 inputs"),
        (
            "ssdlite_mobilevit_xxs",
            {"fmt": "litert", "precision": "fp16"},
            "fp16 export is for classifiers and segmentation models; export the detection model in fp32",
        ),
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


# the command line


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    """A training output directory (config.json + model.safetensors) of a 10-class model trained at 64x64."""
    size = model.pretrained_cfg["input_size"]
    model.pretrained_cfg["input_size"] = (3, 64, 64)
    try:
        return model.save_pretrained(tmp_path_factory.mktemp("runs") / "model")
    finally:
        model.pretrained_cfg["input_size"] = size


def test_torchscript_from_a_model_directory(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "torchscript", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exported mobilevit_xxs at 64x64" in printed  # the checkpoint's input size
    diff = float(re.search(r"max abs diff vs PyTorch: (\S+) \(tolerance 0.0001\)", printed).group(1))
    assert diff <= 1e-4
    assert f"file size: {out.stat().st_size / 1e6:.2f} MB" in printed
    assert torch.jit.load(str(out))(torch.rand(1, 3, 64, 64)).shape == (1, 10)  # the checkpoint's classes


@pytest.mark.slow
def test_onnx_int8_from_a_folder_of_images(checkpoint, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    for i in range(8):
        Image.new("RGB", (80, 72), (30 * i, 255 - 30 * i, 128)).save(tmp_path / f"{i}.png")
    out = tmp_path / "m.onnx"
    args = ["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--int8", "-o", str(out)]
    assert main([*args, "--calibration", str(tmp_path), "--calibration-images", "8", "--img-size", "64", "96"]) == 0
    printed = capsys.readouterr().out
    assert "int8 QDQ, 7-bit weights (the same results on every CPU), calibrated on 8 images" in printed
    assert re.search(r"int8 ran \d+\.\d\dx as fast as fp32 ONNX Runtime on this CPU \(.+\), batch 1", printed)
    assert re.search(r"top-1 agreement with fp32 on 8 calibration images: \d+\.\d%", printed)


def test_fp16_onnx_from_a_model_directory(checkpoint, tmp_path, capsys):
    require_onnx()
    out = tmp_path / "m.onnx"
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--precision", "fp16", "-o", str(out)])
        == 0
    )
    printed = capsys.readouterr().out
    assert "fp16 weights and activations, float32 input and outputs" in printed
    diff, bound = map(float, re.search(r"max abs diff vs PyTorch: (\S+) \(tolerance (\S+)\)", printed).groups())
    assert FP32_TOLERANCE < diff <= bound
    assert re.search(r"top-1 agreement with PyTorch on the structured check images: \d+\.\d%", printed)
    assert f"file size: {out.stat().st_size / 1e6:.2f} MB" in printed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "mobilevit_xxs", "--format", "torchscript", "--int8"], "int8 is not supported for torchscript"),
        (["--model", "mobilevit_xxs", "--format", "coreml", "--int8"], "int8 is not supported for coreml"),
        (["--model", "mobilevit_xxs", "--format", "onnx", "--int8"], "--int8 needs --calibration"),
        (["--checkpoint", "missing.pt", "--model", "mobilevit_xxs", "--format", "onnx"], "checkpoint not found"),
        (["--format", "onnx"], "pass --model NAME, --checkpoint PATH or both"),
        (["--model", "mobilevit_xxs", "--format", "onnx", "--opset", "13"], "opset 13 is too old"),
        (["--model", "mobilevit_xxs", "--format", "torchscript", "--precision", "fp16"], "fp16 is not supported"),
        (  # refused before the calibration images are looked for
            [
                "--model",
                "mobilevit_xxs",
                "--format",
                "onnx",
                "--precision",
                "fp16",
                "--int8",
                "--calibration",
                "nowhere",
            ],
            "fp16 and int8 cannot be combined",
        ),
        (["--model", "ssdlite_mobilevit_xxs", "--format", "onnx", "--precision", "fp16"], "fp16 export is for"),
    ],
)
def test_errors_exit_2_with_a_message(tmp_path, capsys, args, message):
    assert main(["export", *args, "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_model_name_must_match_the_checkpoint(checkpoint, tmp_path, capsys):
    args = ["--checkpoint", str(checkpoint), "--model", "mobilevit_s", "--format", "onnx", "-o", str(tmp_path / "m")]
    assert main(["export", *args]) == 2
    assert "--model mobilevit_s but" in capsys.readouterr().err


def test_unknown_format_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--model", "mobilevit_xxs", "--format", "tflite", "-o", str(tmp_path / "m")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_missing_extra_names_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert main(["export", "--model", "mobilevit_xxs", "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    assert "pip install 'mobilevit[onnx]'" in capsys.readouterr().err
