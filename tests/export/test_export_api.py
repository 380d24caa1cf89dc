"""``mobilevit.export.export``: argument checks, the parity check that guards every export, ExecuTorch."""

from __future__ import annotations

import pytest
import torch

import mobilevit.export as mexport
from mobilevit.export import ExportCheckError, export
from mobilevit.testing import structured_images


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
    ],
)
def test_bad_arguments_are_refused(model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export(model, path=tmp_path / "m", img_size=(128, 128), **kwargs)


def test_a_file_that_differs_from_pytorch_is_an_error(model, tmp_path, monkeypatch):
    monkeypatch.setattr(mexport, "_export", lambda model, *args: lambda x: model(x) + 1e-3)
    with pytest.raises(ExportCheckError, match=r"max abs difference 0.001 > 0.0001 .* kept for inspection"):
        export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64))


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
@pytest.mark.parametrize("int8", [False, True], ids=["fp32", "int8"])
def test_executorch(model, tmp_path, int8):
    pytest.importorskip("executorch")
    calibration = structured_images(8, 64, 64, seed=3) if int8 else None
    report = export(model, "executorch", tmp_path / "m.pte", img_size=(64, 64), int8=int8, calibration=calibration)
    assert report.path.is_file()
    if int8:  # wired through; the quality of ExecuTorch's int8 is tested with its exporter
        assert 0 <= report.top1_agreement <= 1
    else:
        assert report.max_abs_diff <= mexport.FP32_TOLERANCE
