"""MobileViTv2 and both MobileViTv3 families export like v1: fp32 parity in every format, at sizes
the export never saw, int8 ONNX, and graphs within Core ML's rank limit."""

from __future__ import annotations

import platform
import shutil
import sys

import pytest
import torch
from deploy_helpers import coreml_max_rank, onnx_ops_and_ranks, with_fitted_head

from mobilevit import create_model
from mobilevit.export import FP32_TOLERANCE, export
from mobilevit.testing import randomize_, structured_images

NAMES = ["mobilevitv2_050", "mobilevitv3_xxs", "mobilevitv3_050"]  # v2, v3 on v1, v3 on v2
# v2's unfold/fold is rank <= 5; v1 and the v3 on it keep v1's rank-6 fold, which Core ML's
# converter splits (see the Core ML test, which holds for every family)
RANK_5_ONNX = ["mobilevitv2_050", "mobilevitv3_050"]
INT8 = ["mobilevitv2_050", "mobilevitv3_xxs"]
MAX_RANK = 5  # Core ML's limit


def slow_for(*slow_names: str, names: list[str] = NAMES) -> list:
    """``names`` as parameters, those in ``slow_names`` marked slow: where a test of the default run
    already checks the same code (v3 on v2 shares v2's unfold/fold, v3 on v1 v1's, tested in test_onnx)."""
    return [pytest.param(name, marks=pytest.mark.slow) if name in slow_names else name for name in names]


@pytest.fixture(scope="module")
def classifiers():
    """Small randomised 10-class classifiers, as the v1 export tests use."""
    return {name: randomize_(create_model(name, num_classes=10), seed=5).eval() for name in NAMES}


@pytest.fixture(scope="module")
def onnx_dynamic(classifiers, tmp_path_factory):
    """Dynamic ONNX exports by name, each made on first use (15-20 s of tracing)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp("onnx")
    exports = {}

    def exported(name: str):
        if name not in exports:
            exports[name] = export(classifiers[name], "onnx", folder / f"{name}.onnx", dynamic=True)
        return exports[name]

    return exported


@pytest.mark.parametrize("name", slow_for("mobilevitv3_xxs", "mobilevitv3_050"))
@pytest.mark.parametrize("shape", [(3, 224, 320), (2, 100, 130)], ids=["batch3-224x320", "sides-not-multiples-of-32"])
def test_onnx_dynamic_matches_at_unseen_sizes(classifiers, onnx_dynamic, name, shape):
    from mobilevit.export.onnx import run_onnx

    assert onnx_dynamic(name).max_abs_diff <= FP32_TOLERANCE
    x = structured_images(*shape, seed=7)
    with torch.no_grad():
        expected = classifiers[name](x)
    torch.testing.assert_close(run_onnx(onnx_dynamic(name).path, x, threads=1), expected, rtol=0, atol=FP32_TOLERANCE)


# The INT8 models' static fp32 graphs are checked by the int8 export, before it quantizes them.
@pytest.mark.parametrize("name", slow_for(*INT8))
def test_onnx_static_matches(classifiers, name, tmp_path):
    pytest.importorskip("onnxruntime")
    report = export(classifiers[name], "onnx", tmp_path / f"{name}.onnx")
    assert report.max_abs_diff <= FP32_TOLERANCE


@pytest.mark.parametrize("name", slow_for("mobilevitv3_050", names=RANK_5_ONNX))
def test_onnx_graph_is_core_ml_friendly(onnx_dynamic, name):
    """The unfold/fold is rank <= 5, with no Col2Im / Im2Col (F.fold / F.unfold), at opset 17."""
    import onnx

    ops, ranks = onnx_ops_and_ranks(onnx_dynamic(name).path)
    assert not ops & {"Col2Im", "Im2Col"}
    assert {"Reshape", "Transpose"} <= ops
    assert {k: r for k, r in ranks.items() if r > MAX_RANK} == {}
    opsets = onnx.load(onnx_dynamic(name).path).opset_import
    assert [o.version for o in opsets if o.domain in ("", "ai.onnx")] == [17]


@pytest.fixture(scope="module")
def int8_exports(tmp_path_factory):
    """int8 ONNX exports of the INT8 models with heads fitted to their calibration images, by name."""
    pytest.importorskip("onnxruntime")
    images = structured_images(8, 128, 128, seed=1)
    folder = tmp_path_factory.mktemp("int8")
    exports = {}
    for name in INT8:
        model = with_fitted_head(randomize_(create_model(name)).eval(), images)
        report = export(model, "onnx", folder / f"{name}.onnx", img_size=(128, 128), int8=True, calibration=images)
        exports[name] = (model, images, report)
    return exports


@pytest.mark.parametrize("name", INT8)
def test_onnx_int8_reports_top1_agreement(int8_exports, name):
    _, _, report = int8_exports[name]
    assert report.top1_agreement >= 7 / 8
    assert any("int8 QDQ" in note for note in report.notes)
    (drift,) = [note for note in report.notes if note.startswith("fp32 graph before quantization")]
    assert float(drift.rsplit("max abs diff ", 1)[1].split()[0]) <= FP32_TOLERANCE


def test_onnx_int8_agrees_on_a_cpu_without_vnni(int8_exports):
    """The file is shipped to CPUs other than the one that made it: on an emulated AVX2 CPU without VNNI
    it agrees with fp32 as well as here. Full-range int8 weights overflowed there: top-1 agreement 0.5."""
    from mobilevit.export.onnx import run_onnx
    from mobilevit.testing import CPU_WITHOUT_VNNI, run_onnx_on_emulated_cpu

    if shutil.which("qemu-x86_64") is None or platform.machine() != "x86_64":
        pytest.skip("needs QEMU user mode on x86_64 (apt-get install qemu-user; scripts/test.sh installs it)")
    model, images, report = int8_exports["mobilevitv2_050"]
    with torch.no_grad():
        reference = model(images)
    here = torch.cat([run_onnx(report.path, x) for x in images.split(1)])
    emulated = run_onnx_on_emulated_cpu(report.path, images, CPU_WITHOUT_VNNI)
    assert (emulated.argmax(1) == reference.argmax(1)).float().mean() >= 7 / 8
    # integer kernels are exact on both; only the fp32 ops between them (LayerNorm, softmax) round differently
    torch.testing.assert_close(emulated, here, rtol=0, atol=0.01 * (here - reference).abs().max().item())


@pytest.mark.parametrize("name", NAMES)
def test_torchscript_matches_at_another_size(classifiers, name, tmp_path):
    from mobilevit.export.torchscript import run_torchscript

    model = classifiers[name]
    report = export(model, "torchscript", tmp_path / f"{name}.pt", img_size=(128, 160), dynamic=True)
    assert report.max_abs_diff <= FP32_TOLERANCE
    x = structured_images(2, 224, 96, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(run_torchscript(report.path, x), model(x), rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_executorch_fp32(classifiers, name, tmp_path):
    """15-25 s each on one CPU thread."""
    pytest.importorskip("executorch")
    report = export(classifiers[name], "executorch", tmp_path / f"{name}.pte", img_size=(64, 64))
    assert report.max_abs_diff <= FP32_TOLERANCE


# v1's rank-6 fold, which v3 on v1 keeps, is checked on mobilevit_xxs by test_coreml
@pytest.mark.parametrize("name", slow_for("mobilevitv3_xxs", "mobilevitv3_050"))
def test_coreml_spec_validates_and_its_program_is_rank_5(classifiers, name, tmp_path):
    ct = pytest.importorskip("coremltools")
    report = export(classifiers[name], "coreml", tmp_path / f"{name}.mlpackage", img_size=(64, 96))
    spec = ct.utils.load_spec(str(report.path))
    assert [(o.name, list(o.type.multiArrayType.shape)) for o in spec.description.output] == [("logits", [1, 10])]
    assert coreml_max_rank(spec) <= MAX_RANK
    if sys.platform != "darwin":
        assert report.max_abs_diff is None
