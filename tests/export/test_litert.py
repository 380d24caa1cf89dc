"""LiteRT export (mobilevit.export.litert): fp32 parity with PyTorch in the LiteRT interpreter at two
input sizes, the NHWC layout of the file, a non-default class count, every op inside one XNNPACK partition,
fp16 weights, int8 (top-1 agreement, integer kernels), segmentation and detection, what LiteRT refuses, the
missing-extra message."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from mobilevit import create_model
from mobilevit.cli import main
from mobilevit.export import FP16_LITERT_NOTE, FP16_TOLERANCE, FP32_TOLERANCE, export
from mobilevit.export.litert import LiteRTRunner, SigmoidGate, TokenLayerNorm, export_litert, placement
from mobilevit.testing import randomize_, structured_images

pytest.importorskip("litert_torch", reason="the litert extra: pip install 'mobilevit[litert]'")
Interpreter = pytest.importorskip("ai_edge_litert.interpreter").Interpreter
INTEGER_KERNELS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}  # the ops that carry the weights


@pytest.fixture(scope="module")
def seven_classes():
    """XXS with a 7-class head and one transformer layer per block: every op, a shorter conversion."""
    return randomize_(create_model("mobilevit_xxs", num_classes=7, transformer_depths=(1, 1, 1))).eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 128)])
def test_fp32_matches_pytorch_at_two_sizes(seven_classes, tmp_path, size):
    report = export(seven_classes, "litert", tmp_path / "model.tflite", img_size=size)
    assert report.max_abs_diff <= FP32_TOLERANCE
    runner = LiteRTRunner(report.path)
    x = structured_images(1, *size, seed=7)
    with torch.no_grad():
        expected = seven_classes(x)
    assert runner(x).shape == (1, 7)  # the new head survived the conversion
    assert (runner(x) - expected).abs().max().item() <= FP32_TOLERANCE
    where = runner.placement()
    assert (where.partitions, where.outside) == (1, {}) and str(where) in report.notes
    if size == (64, 64):
        _check_nhwc_layout(report.path, seven_classes, x)
        _check_computes_nothing_in_torch(runner, x)
        with pytest.raises(ValueError, match=r"exported for inputs of shape \(1, 3, 64, 64\)"):
            runner(structured_images(1, 96, 128))


def _check_computes_nothing_in_torch(runner: LiteRTRunner, x: torch.Tensor) -> None:
    """The layout change around the file runs in NumPy: a torch kernel there wakes torch's OpenMP workers,
    which spin on the cores XNNPACK's threads need. Only views are allowed (detach, lift_fresh from NumPy,
    the outputs' permute)."""
    with _TorchOps() as seen:
        runner(x)
    assert seen.ops <= {"detach", "lift_fresh", "permute", "view", "alias"}, seen.ops


class _TorchOps(TorchDispatchMode):
    """Records the torch ops run inside the block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("affine", [True, False])
def test_token_layer_norm_is_torchs_layer_norm(affine):
    norm = nn.LayerNorm(24, elementwise_affine=affine)
    if affine:
        randomize_(norm, calibrate=lambda _: None)
    x = structured_images(1, 32, 24, seed=4)[0] * 3 - 1  # [3, 32, 24]: rows of structured pixels
    with torch.no_grad():
        assert (TokenLayerNorm(norm)(x) - norm(x)).abs().max().item() <= 1e-5


def test_sigmoid_gate_is_silu():
    x = structured_images(2, 16, 16, seed=4) * 8 - 4
    assert torch.allclose(SigmoidGate()(x), torch.nn.functional.silu(x), atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"])
def test_export_of_every_family_matches_pytorch(classifiers, tmp_path, name):
    """The v2 and v3 families at full depth (v1 is covered above): separable attention and v3's fusion."""
    report = export(classifiers(name), "litert", tmp_path / f"{name}.tflite", img_size=(64, 64))
    assert report.max_abs_diff <= FP32_TOLERANCE
    assert "1 XNNPACK partition" in report.notes[-1] and report.notes[-1].endswith("none outside")


class _Strided(torch.nn.Module):
    """A strided slice between two convs: LiteRT's builtin kernel runs it, outside XNNPACK."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = torch.nn.Conv2d(3, 8, 1), torch.nn.Conv2d(8, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x)[:, :, ::2, ::2])


def test_placement_sees_ops_outside_xnnpack(tmp_path):
    """The check above could not fail if ``placement`` missed fallbacks: here one op splits the file."""
    path = export_litert(_Strided().eval(), tmp_path / "strided.tflite", structured_images(1, 16, 16))
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    where = placement(interpreter)
    assert (where.partitions, where.outside) == (2, {"STRIDED_SLICE": 2})  # one per axis
    assert str(where).endswith("outside XNNPACK: STRIDED_SLICE x2")


def _check_nhwc_layout(path, model, x):
    """The file itself, without our runner, takes [1, H, W, 3]: what an Android app's bitmap gives."""
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert tuple(inp["shape"]) == (1, 64, 64, 3) and tuple(out["shape"]) == (1, 7)
    interpreter.set_tensor(inp["index"], x.permute(0, 2, 3, 1).contiguous().numpy())
    interpreter.invoke()
    with torch.no_grad():
        expected = model(x)
    assert (torch.from_numpy(interpreter.get_tensor(out["index"])) - expected).abs().max().item() <= FP32_TOLERANCE


def test_fp16_halves_the_file_with_fp16_weights_and_keeps_top1(int8_classifier, tmp_path):
    """Every weight of a convolution or fully connected layer stored in fp16 and dequantized once; the
    input (NHWC float32) and logits as in the fp32 file; the check images' top-1 and logits kept."""
    model, images = int8_classifier("mobilevit_xxs", size=64, transformer_depths=(1, 1, 1))
    fp32 = export(model, "litert", tmp_path / "fp32.tflite", img_size=(64, 64))
    fp16 = export(model, "litert", tmp_path / "fp16.tflite", img_size=(64, 64), precision="fp16")
    assert fp16.size_mb == fp16.path.stat().st_size / 1e6
    assert 0.45 < fp16.size_mb / fp32.size_mb < 0.6  # biases and norms stay fp32
    assert FP16_LITERT_NOTE in fp16.notes
    interpreter = Interpreter(model_path=str(fp16.path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert (inp["dtype"].__name__, tuple(inp["shape"])) == ("float32", (1, 64, 64, 3))
    assert (out["dtype"].__name__, tuple(out["shape"])) == ("float32", (1, 8))
    dtypes = {t["index"]: t["dtype"].__name__ for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    dequantized = {op["outputs"][0]: op["inputs"][0] for op in ops if op["op_name"] == "DEQUANTIZE"}
    weighted = [op for op in ops if op["op_name"] in INTEGER_KERNELS]
    assert {op["op_name"] for op in weighted} == INTEGER_KERNELS
    assert all(dtypes[dequantized[op["inputs"][1]]] == "float16" for op in weighted)
    with torch.no_grad():
        reference = model(images)
    runner = LiteRTRunner(fp16.path)
    logits = torch.cat([runner(x) for x in images.split(1)])
    assert logits.argmax(1).tolist() == reference.argmax(1).tolist() == list(range(8))
    assert fp16.top1_agreement == 1
    assert fp16.tolerance == pytest.approx(FP16_TOLERANCE * reference.abs().max().item(), rel=1e-4)
    assert FP32_TOLERANCE < (logits - reference).abs().max().item() <= fp16.tolerance  # fp16 rounding shows


def test_fp16_and_int8_are_one_or_the_other(seven_classes, tmp_path):
    with pytest.raises(ValueError, match="either int8 .* or fp16, not both"):
        export_litert(
            seven_classes,
            tmp_path / "x.tflite",
            structured_images(1, 64, 64),
            structured_images(2, 64, 64),
            fp16=True,
        )


def test_int8_agrees_with_fp32_on_top1_and_runs_integer_kernels(int8_classifier, tmp_path):
    """int8 with int8 input and logits (their scale and zero point in the file), weights of one byte."""
    model, images = int8_classifier("mobilevit_xxs", size=64, transformer_depths=(1, 1, 1))
    calibration = structured_images(16, 64, 64, seed=2)
    report = export(model, "litert", tmp_path / "int8.tflite", img_size=(64, 64), int8=True, calibration=calibration)
    assert report.top1_agreement is not None and any("LiteRT int8" in note for note in report.notes)
    runner = LiteRTRunner(report.path)
    where = runner.placement()
    assert (where.partitions, where.outside) == (1, {})
    with torch.no_grad():
        fp32 = model(images).argmax(1)
    int8 = torch.cat([runner(x) for x in images.split(1)]).argmax(1)
    assert fp32.tolist() == list(range(8)) and (int8 == fp32).sum() >= 6
    interpreter = Interpreter(model_path=str(report.path))
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"].__name__ == out["dtype"].__name__ == "int8" and inp["quantization"][0] > 0
    dtypes = {t["index"]: t["dtype"].__name__ for t in interpreter.get_tensor_details()}
    weighted = [op for op in interpreter._get_ops_details() if op["op_name"] in INTEGER_KERNELS]
    assert {op["op_name"] for op in weighted} == INTEGER_KERNELS
    assert all(dtypes[op["inputs"][0]] == dtypes[op["inputs"][1]] == "int8" for op in weighted)  # int8 x int8
    params = sum(p.numel() for p in model.parameters())
    assert report.path.stat().st_size < 2 * params  # fp32 weights would take 4 bytes each
    assert _logistic_dtypes(report.path) == {"int8"}  # SiLU runs in int8 (SigmoidGate)


@pytest.mark.slow
def test_the_converters_own_int8_recipe_leaves_silu_in_fp32(int8_classifier, tmp_path):
    """What the SigmoidGate rewrite is for: without it (``rewrite=False``) every SiLU is a float island."""
    model, images = int8_classifier("mobilevit_xxs", size=64, transformer_depths=(1, 1, 1))
    calibration = structured_images(16, 64, 64, seed=2)
    standard = export_litert(model, tmp_path / "standard.tflite", images[:1], calibration, rewrite=False)
    assert _logistic_dtypes(standard) == {"float32"}


def _logistic_dtypes(path) -> set[str]:
    interpreter = Interpreter(model_path=str(path))
    dtypes = {t["index"]: t["dtype"].__name__ for t in interpreter.get_tensor_details()}
    return {dtypes[op["outputs"][0]] for op in interpreter._get_ops_details() if op["op_name"] == "LOGISTIC"}


@pytest.mark.slow
def test_segmentation_matches_pytorch_with_nhwc_logits(tmp_path):
    model = randomize_(create_model("deeplabv3_mobilevit_xxs", num_classes=5)).eval()
    report = export(model, "litert", tmp_path / "seg.tflite", img_size=(64, 64))
    assert report.max_abs_diff <= FP32_TOLERANCE
    interpreter = Interpreter(model_path=str(report.path))
    interpreter.allocate_tensors()
    assert tuple(interpreter.get_output_details()[0]["shape"]) == (1, 64, 64, 5)


@pytest.mark.slow
def test_detection_raw_predictions_match_pytorch(tmp_path):
    """The detector's exported graph (boxes and scores of every anchor; NMS runs after it) converts too."""
    model = randomize_(create_model("ssdlite_mobilevit_xxs", num_classes=3)).eval()
    report = export(model, "litert", tmp_path / "det.tflite", img_size=(320, 320))
    assert report.max_abs_diff <= FP32_TOLERANCE  # boxes as fractions of the side, as for every format
    boxes, scores = LiteRTRunner(report.path)(structured_images(1, 320, 320))
    assert boxes.shape[2] == 4 and scores.shape[2] == 3 and boxes.shape[1] == scores.shape[1]


@pytest.mark.parametrize(
    ("model_name", "kwargs", "message"),
    [
        ("mobilevit_xxs", {"dynamic": True}, "dynamic shapes are not supported for litert"),
        ("mobilevit_xxs", {"int8": True}, "int8 export needs calibration images"),
        ("mobilevit_xxs", {"int8": True, "precision": "fp16"}, "fp16 and int8 cannot be combined"),
        ("ssdlite_mobilevit_xxs", {"img_size": (64, 64)}, "detects on 320x320 inputs"),
    ],
)
def test_what_litert_refuses(tmp_path, model_name, kwargs, message):
    kwargs = {"img_size": (64, 64), **kwargs}
    with pytest.raises(ValueError, match=message):
        export(create_model(model_name), "litert", tmp_path / "x.tflite", **kwargs)


def test_missing_extra_says_what_to_install(seven_classes, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "litert_torch", None)  # as if not installed
    hint = r"pip install 'mobilevit\[litert\]'"
    with pytest.raises(ImportError, match=hint):
        export_litert(seven_classes, tmp_path / "x.tflite", structured_images(1, 64, 64))
    code = main(["export", "--model", "mobilevit_xxs", "--format", "litert", "-o", str(tmp_path / "x.tflite")])
    assert code == 2 and "mobilevit[litert]" in capsys.readouterr().err
