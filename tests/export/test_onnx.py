"""ONNX export (mobilevit.export.onnx): fp32 parity for every family (v1, v2, v3 on v1, v3 on v2),
dynamic batch and input size, opsets, graphs within Core ML's rank limit, fp16 files, int8 static
quantization."""

from __future__ import annotations

import functools
import platform
import shutil
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx

from mobilevit.export import FP16_ONNX_NOTE, FP16_TOLERANCE, FP32_TOLERANCE, export, machine
from mobilevit.export.onnx import (
    PORTABLE_WEIGHT_MAX,
    Int8PortabilityError,
    OnnxRunner,
    int8_speed_note,
    quantize_onnx,
    saturating_weights,
)
from mobilevit.testing import structured_images

MAX_RANK = 5  # Core ML's limit


def slow(name: str):
    """``name`` as a parameter marked slow: a v3 whose unfold/fold (v1's or v2's) a test of the
    default run already checks."""
    return pytest.param(name, marks=pytest.mark.slow)


def onnx_ops_and_ranks(path: Path) -> tuple[set[str], dict[str, int]]:
    """The op types of an ONNX graph and the rank of every node output (after shape inference)."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    typed = {v.name: v.type.tensor_type for v in [*graph.value_info, *graph.input, *graph.output]}
    ranks = {}
    for node in graph.node:
        for name in node.output:
            assert typed[name].HasField("shape"), f"{node.op_type} {name}: rank unknown"
            ranks[f"{node.op_type} {name}"] = len(typed[name].shape.dim)
    return {node.op_type for node in graph.node}, ranks


@pytest.fixture(scope="module")
def dynamic_exports(classifiers, tmp_path_factory):
    """``dynamic_exports(name)``: the dynamic 256x256 export of ``classifiers(name)``, made on first
    use (15-20 s of tracing each)."""
    folder = tmp_path_factory.mktemp("onnx")

    @functools.cache
    def exported(name: str):
        return export(classifiers(name), "onnx", folder / f"{name}.onnx", img_size=(256, 256), dynamic=True)

    return exported


@pytest.fixture(scope="module")
def dynamic_export(dynamic_exports):
    return dynamic_exports("mobilevit_xxs")


def test_dynamic_export_is_checked_and_opset_17(dynamic_export):
    assert dynamic_export.max_abs_diff <= FP32_TOLERANCE
    proto = onnx.load(dynamic_export.path)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (inp,) = proto.graph.input
    assert [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim] == ["batch", 3, "height", "width"]
    assert [o.name for o in proto.graph.output] == ["logits"]


@pytest.fixture(scope="module")
def runners(dynamic_exports):
    """``runners(name)``: one ONNX Runtime session on ``dynamic_exports(name)``."""
    return functools.cache(lambda name: OnnxRunner(dynamic_exports(name).path, threads=1))


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", slow("mobilevitv3_xxs"), slow("mobilevitv3_050")])
@pytest.mark.parametrize("shape", [(3, 224, 320), (2, 100, 130)], ids=["batch3-224x320", "sides-not-multiples-of-32"])
def test_dynamic_export_runs_at_unseen_batch_and_sizes(classifiers, dynamic_exports, runners, name, shape):
    assert dynamic_exports(name).max_abs_diff <= FP32_TOLERANCE
    x = structured_images(*shape, seed=7)
    logits = runners(name)(x)
    assert logits.shape == (shape[0], 10)
    with torch.no_grad():
        expected = classifiers(name)(x)
    torch.testing.assert_close(logits, expected, rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.parametrize(
    ("name", "img_size", "opset"),
    [
        pytest.param("mobilevit_xxs", (160, 224), 18, marks=pytest.mark.slow),
        # the v2 and v3-on-v1 static fp32 graphs are checked by their int8 exports, before quantizing
        pytest.param("mobilevitv2_050", (256, 256), 17, marks=pytest.mark.slow),
        pytest.param("mobilevitv3_xxs", (256, 256), 17, marks=pytest.mark.slow),
        ("mobilevitv3_050", (256, 256), 17),
    ],
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else f"opset{v}" if isinstance(v, int) else None,
)
def test_static_export(classifiers, tmp_path, name, img_size, opset):
    report = export(classifiers(name), "onnx", tmp_path / f"{name}.onnx", img_size=img_size, opset=opset)
    assert report.max_abs_diff <= FP32_TOLERANCE
    proto = onnx.load(report.path)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [1, 3, *img_size]
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [opset]


# v2's unfold/fold is rank <= 5; v1 and the v3 on it keep v1's rank-6 fold, which Core ML's converter
# splits (see test_coreml, which holds for every family)
@pytest.mark.parametrize("name", ["mobilevitv2_050", slow("mobilevitv3_050")])
def test_graph_is_core_ml_friendly(dynamic_exports, name):
    """The unfold/fold is rank <= 5, with no Col2Im / Im2Col (F.fold / F.unfold), at opset 17."""
    ops, ranks = onnx_ops_and_ranks(dynamic_exports(name).path)
    assert not ops & {"Col2Im", "Im2Col"}
    assert {"Reshape", "Transpose"} <= ops
    assert {k: r for k, r in ranks.items() if r > MAX_RANK} == {}
    opsets = onnx.load(dynamic_exports(name).path).opset_import
    assert [o.version for o in opsets if o.domain in ("", "ai.onnx")] == [17]


def float_types(path: Path) -> tuple[set[str], set[str], list[str]]:
    """The float types of an ONNX file's initializers (its weights), of its inputs and outputs, and the
    op types whose outputs are float32 (after shape inference): what an fp16 file stores and computes in."""
    graph = onnx.shape_inference.infer_shapes(onnx.load(path)).graph
    name = onnx.TensorProto.DataType.Name
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
    weights = {name(t.data_type) for t in graph.initializer if t.data_type in floats}
    io = {name(v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output]}
    typed = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
    fp32_ops = [n.op_type for n in graph.node if any(typed.get(o) == onnx.TensorProto.FLOAT for o in n.output)]
    return weights, io, fp32_ops


def test_fp16_halves_the_file_and_keeps_top1(int8_classifier, tmp_path):
    """fp16 weights and activations between a float32 input and output; the check images' logits within
    the tolerance and, with a head that gives each its own class, the same top-1."""
    model, images = int8_classifier("mobilevit_xxs", size=64)  # export's 8 fp16 check images, fitted
    fp32 = export(model, "onnx", tmp_path / "fp32.onnx", img_size=(64, 64))
    fp16 = export(model, "onnx", tmp_path / "fp16.onnx", img_size=(64, 64), precision="fp16")
    assert fp16.size_mb == fp16.path.stat().st_size / 1e6
    assert 0.45 < fp16.size_mb / fp32.size_mb < 0.55
    weights, io, fp32_ops = float_types(fp16.path)
    assert weights == {"FLOAT16"} and io == {"FLOAT"}
    assert fp32_ops == ["Cast"]  # only the output's cast back: every op computes in fp16
    assert FP16_ONNX_NOTE in fp16.notes
    with torch.no_grad():
        reference = model(images)
    logits = torch.cat([OnnxRunner(fp16.path)(x) for x in images.split(1)])
    assert logits.argmax(1).tolist() == reference.argmax(1).tolist() == list(range(8))
    assert fp16.top1_agreement == 1
    assert fp16.tolerance == pytest.approx(FP16_TOLERANCE * reference.abs().max().item(), rel=1e-4)
    diff = (logits - reference).abs().max().item()  # PyTorch on a batch here, on single images in export()
    assert diff == pytest.approx(fp16.max_abs_diff, abs=1e-4) and FP32_TOLERANCE < diff <= fp16.tolerance


@pytest.mark.slow
def test_fp16_dynamic_runs_at_unseen_batch_and_sizes(classifiers, tmp_path):
    """The dynamic graph's resizes keep their scales in fp32 (the converter knows Resize's inputs)."""
    model = classifiers("mobilevit_xxs")
    report = export(model, "onnx", tmp_path / "m.onnx", img_size=(128, 128), dynamic=True, precision="fp16")
    assert float_types(report.path)[0] == {"FLOAT16"}
    x = structured_images(2, 100, 130, seed=3)
    with torch.no_grad():
        reference = model(x)
    assert (OnnxRunner(report.path)(x) - reference).abs().max().item() <= report.tolerance


def test_int8_agrees_with_fp32_on_top1(model, dynamic_export, tmp_path):
    path = quantize_onnx(dynamic_export.path, tmp_path / "int8.onnx", structured_images(32, 128, 128, seed=3))
    ops = {n.op_type for n in onnx.load(path).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = structured_images(32, 128, 128, seed=4)
    reference, logits = model(x), OnnxRunner(path)(x)
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


INT8 = ["mobilevitv2_050", "mobilevitv3_xxs"]


@pytest.fixture(scope="module")
def int8_exports(int8_classifier, tmp_path_factory):
    """int8 exports (``export(..., int8=True)``) of the INT8 models with heads fitted to their
    calibration images, by name: (model, images, report)."""
    folder = tmp_path_factory.mktemp("int8-export")
    exports = {}
    for name in INT8:
        model, images = int8_classifier(name)
        report = export(model, "onnx", folder / f"{name}.onnx", img_size=(128, 128), int8=True, calibration=images)
        exports[name] = (model, images, report)
    return exports


@pytest.mark.parametrize("name", INT8)
def test_int8_export_reports_top1_agreement(int8_exports, name):
    _, _, report = int8_exports[name]
    assert report.top1_agreement >= 7 / 8
    assert any("int8 QDQ" in note for note in report.notes)
    (drift,) = [note for note in report.notes if note.startswith("fp32 graph before quantization")]
    assert float(drift.rsplit("max abs diff ", 1)[1].split()[0]) <= FP32_TOLERANCE


def test_int8_export_agrees_on_a_cpu_without_vnni(int8_exports):
    """The file is shipped to CPUs other than the one that made it: on an emulated AVX2 CPU without VNNI
    it agrees with fp32 as well as here. Full-range int8 weights overflowed there: top-1 agreement 0.5."""
    from mobilevit.testing import CPU_WITHOUT_VNNI, run_on_emulated_cpu

    if shutil.which("qemu-x86_64") is None or platform.machine() != "x86_64":
        pytest.skip("needs QEMU user mode on x86_64 (apt-get install qemu-user; scripts/test.sh installs it)")
    model, images, report = int8_exports["mobilevitv2_050"]
    with torch.no_grad():
        reference = model(images)
    here = torch.cat([OnnxRunner(report.path)(x) for x in images.split(1)])
    emulated = run_on_emulated_cpu(report.path, images, CPU_WITHOUT_VNNI)
    assert (emulated.argmax(1) == reference.argmax(1)).float().mean() >= 7 / 8
    # integer kernels are exact on both; only the fp32 ops between them (LayerNorm, softmax) round differently
    torch.testing.assert_close(emulated, here, rtol=0, atol=0.01 * (here - reference).abs().max().item())


def test_old_opset_is_refused(model, tmp_path):
    with pytest.raises(ValueError, match="opset 16 is too old"):
        export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64), opset=16)


def test_missing_extra_names_the_install(model, tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install 'mobilevit\[onnx\]'"):
        export(model, "onnx", tmp_path / "m.onnx", img_size=(64, 64))
