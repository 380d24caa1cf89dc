"""ONNX export: fp32 parity, dynamic batch and input size, opsets, int8 static quantization."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx

from mobilevit.export import FP32_TOLERANCE, export, machine
from mobilevit.export.onnx import (
    PORTABLE_WEIGHT_MAX,
    Int8PortabilityError,
    OnnxRunner,
    int8_speed_note,
    quantize_onnx,
    run_onnx,
    saturating_weights,
)
from mobilevit.testing import structured_images


@pytest.fixture(scope="module")
def dynamic_export(model, tmp_path_factory):
    return export(model, "onnx", tmp_path_factory.mktemp("onnx") / "dynamic.onnx", img_size=(256, 256), dynamic=True)


def test_dynamic_export_is_checked_and_opset_17(dynamic_export):
    assert dynamic_export.max_abs_diff <= FP32_TOLERANCE
    proto = onnx.load(dynamic_export.path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = proto.graph.input
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert [o.name for o in proto.graph.output] == ["logits"]


@pytest.fixture(scope="module")
def runner(dynamic_export):
    return OnnxRunner(dynamic_export.path, threads=1)


@pytest.mark.parametrize("shape", [(3, 224, 320), (2, 100, 130)], ids=["batch3-224x320", "sides-not-multiples-of-32"])
def test_dynamic_export_runs_at_unseen_batch_and_sizes(model, runner, shape):
    x = structured_images(*shape, seed=7)
    logits = runner(x)
    assert logits.shape == (shape[0], 10)
    torch.testing.assert_close(logits, model(x), rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.slow
def test_static_export_at_opset_18(model, tmp_path):
    report = export(model, "onnx", tmp_path / "static.onnx", img_size=(160, 224), opset=18)
    assert report.max_abs_diff <= FP32_TOLERANCE
    proto = onnx.load(report.path)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 160, 224]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]


def test_int8_agrees_with_fp32_on_top1(model, dynamic_export, tmp_path):
    path = quantize_onnx(dynamic_export.path, tmp_path / "int8.onnx", structured_images(32, 128, 128, seed=3))
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = structured_images(32, 128, 128, seed=4)
    reference, logits = model(x), run_onnx(path, x)
    # A random model's top-2 logits are close (median margin ~0.4), so int8 flips some of them (~22%
    # here; 0.9% on a trained Fashion-MNIST model); a broken quantization would agree by chance only.
    assert (logits.argmax(1) == reference.argmax(1)).float().mean() >= 0.6
    assert (logits - reference).pow(2).mean().sqrt() < 0.4 * reference.std()


@pytest.fixture(scope="module")
def int8_files(dynamic_export, tmp_path_factory):
    """Ours, and one with full-range int8 weights (-127..127, ONNX Runtime's quantizer's default)."""
    folder = tmp_path_factory.mktemp("int8")
    images = structured_images(4, 64, 64, seed=3)
    return {
        "ours": quantize_onnx(dynamic_export.path, folder / "ours.onnx", images),
        "full range": quantize_onnx(dynamic_export.path, folder / "full.onnx", images, portable=False),
    }


def test_int8_weights_cannot_overflow_on_cpus_without_vnni(int8_files):
    """x86 CPUs without VNNI add u8 x s8 products pairwise in 16 bits: 255 * 2 * 64 <= 32767 holds for
    our weights, on every CPU kind; full-range weights break it (and gave wrong top-1 there)."""
    from onnx import numpy_helper

    graph = onnx.load(int8_files["ours"]).graph
    int8 = [numpy_helper.to_array(t) for t in graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(int8) > 20 and max(abs(w.astype(int)).max() for w in int8) == PORTABLE_WEIGHT_MAX
    assert saturating_weights(int8_files["ours"]) == []
    overflowing = saturating_weights(int8_files["full range"])
    assert len(overflowing) > 20 and all(name.endswith("_quantized") for name in overflowing)


@pytest.mark.parametrize(("vnni", "refused"), [(False, True), (True, False)], ids=["avx2", "vnni"])
def test_full_range_int8_is_refused_on_x86_without_vnni(int8_files, monkeypatch, vnni, refused):
    monkeypatch.setattr(machine, "is_x86", lambda: True)
    monkeypatch.setattr(machine, "has_vnni", lambda: vnni)
    OnnxRunner(int8_files["ours"])  # runs everywhere
    if refused:
        with pytest.raises(Int8PortabilityError, match=r"overflow on x86 CPUs without VNNI.*mobilevit export --int8"):
            OnnxRunner(int8_files["full range"])
    else:
        OnnxRunner(int8_files["full range"])


@pytest.mark.parametrize(
    ("x86", "vnni", "speedup", "says"),
    [
        (True, False, 0.8, "slower than fp32 here (x86 CPUs without VNNI have no fast 8-bit dot product)"),
        (True, True, 0.9, "slower than fp32 here (SiLU, LayerNorm and softmax have no integer kernels)"),
        (True, True, 1.2, None),
        (False, None, 1.1, None),
    ],
)
def test_int8_speed_note_says_when_int8_is_slower_here(monkeypatch, x86, vnni, speedup, says):
    monkeypatch.setattr(machine, "is_x86", lambda: x86)
    monkeypatch.setattr(machine, "has_vnni", lambda: vnni)
    note = int8_speed_note(speedup)
    assert note.startswith(f"int8 ran {speedup:.2f}x as fast as fp32 ONNX Runtime on this CPU ({machine.cpu_name()}")
    assert ("without VNNI" in note) == (vnni is False) and ("with VNNI" in note) == bool(vnni)
    if says:
        assert says in note and note.endswith("deploy the fp32 file on CPUs like this one")
    else:
        assert "slower" not in note


def test_old_opset_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="opset 16 is too old"):
        export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64), opset=16)


def test_missing_extra_names_the_install(model, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'mobilevit\[onnx\]'"):
        export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64))
