"""``mobilevit export`` as a user runs it: checkpoints, default sizes, printed checks and errors."""

from __future__ import annotations

import re
import sys

import pytest
import torch
from PIL import Image

from mobilevit.cli import main


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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "mobilevit_xxs", "--format", "torchscript", "--int8"], "int8 is not supported for torchscript"),
        (["--model", "mobilevit_xxs", "--format", "coreml", "--int8"], "int8 is not supported for coreml"),
        (["--model", "mobilevit_xxs", "--format", "onnx", "--int8"], "--int8 needs --calibration"),
        (["--checkpoint", "missing.pt", "--model", "mobilevit_xxs", "--format", "onnx"], "checkpoint not found"),
        (["--format", "onnx"], "pass --model NAME, --checkpoint PATH or both"),
        (["--model", "mobilevit_xxs", "--format", "onnx", "--opset", "13"], "opset 13 is too old"),
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
