"""MobileViTv2 deploys like v1: optimize_for_inference, every export format with fp32 parity, int8 ONNX,
a Core ML-friendly graph (rank <= 5, no col2im), bench against timm and Hugging Face, and predict."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from deploy_helpers import onnx_ops_and_ranks, with_fitted_head
from torch import nn

from mobilevit import create_model, optimize_for_inference
from mobilevit.cli import main
from mobilevit.export import FP32_TOLERANCE, export
from mobilevit.export.bench import bench
from mobilevit.export.optimize import FusedConv2d
from mobilevit.models.mobilevitv2 import ConvFeedForward
from mobilevit.testing import randomize_, structured_images

NAMES = ["mobilevitv2_050", "mobilevitv2_100"]
MAX_RANK = 5  # Core ML's limit


@pytest.fixture(scope="module")
def models():
    return {name: randomize_(create_model(name), seed=i).eval() for i, name in enumerate(NAMES)}


@pytest.fixture(scope="module")
def v2():
    """A small randomised v2 classifier for the exports (10 classes, as the v1 export tests use)."""
    return randomize_(create_model("mobilevitv2_050", num_classes=10), seed=5).eval()


def test_optimize_fuses_every_conv_and_keeps_the_group_norms(models):
    model = models[NAMES[0]]
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear, nn.SiLU)) for m in fast.modules())
    group_norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len([m for m in fast.modules() if isinstance(m, nn.GroupNorm)]) == len(group_norms) == 21
    ffns = [m for m in fast.modules() if isinstance(m, ConvFeedForward)]
    assert ffns and all(f.fc1.activation == "swish" and isinstance(f.act, nn.Identity) for f in ffns)
    attn = fast.stages[2][1].global_rep.layers[0].attn
    assert isinstance(attn.qkv_proj, FusedConv2d) and isinstance(attn.out_proj, FusedConv2d)


def test_optimized_traced_fallback_matches(models):
    model = models[NAMES[0]]
    x = structured_images(1, 160, 224, seed=3)
    with torch.inference_mode():
        # check_trace would rerun the module eagerly, on the oneDNN kernels the trace replaces: the
        # comparison that matters is the one below, against the original model
        traced = torch.jit.trace(optimize_for_inference(model), x, check_trace=False)
        assert not any("mkldnn" in str(node.kind()) for node in traced.inlined_graph.nodes())
        torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def onnx_dynamic(v2, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    return export(v2, "onnx", tmp_path_factory.mktemp("onnx") / "v2.onnx", dynamic=True)


@pytest.mark.parametrize("shape", [(3, 224, 320), (2, 100, 130)], ids=["batch3-224x320", "sides-not-multiples-of-32"])
def test_onnx_dynamic_matches_at_unseen_sizes(v2, onnx_dynamic, shape):
    from mobilevit.export.onnx import run_onnx

    assert onnx_dynamic.max_abs_diff <= FP32_TOLERANCE
    x = structured_images(*shape, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(onnx_dynamic.path, x, threads=1), v2(x), rtol=0, atol=FP32_TOLERANCE)


def test_onnx_graph_is_core_ml_friendly(onnx_dynamic):
    """The unfold/fold is rank <= 5 (no rank-6 reshape, as v1's patches need) and no Col2Im / F.fold."""
    import onnx

    ops, ranks = onnx_ops_and_ranks(onnx_dynamic.path)
    assert not ops & {"Col2Im", "Im2Col"}
    assert {"Reshape", "Transpose"} <= ops
    assert {k: r for k, r in ranks.items() if r > MAX_RANK} == {}
    opsets = onnx.load(onnx_dynamic.path).opset_import
    assert [o.version for o in opsets if o.domain in ("", "ai.onnx")] == [17]


def test_onnx_int8_reports_top1_agreement(tmp_path):
    pytest.importorskip("onnxruntime")
    images = structured_images(8, 128, 128, seed=1)
    model = with_fitted_head(randomize_(create_model("mobilevitv2_050")).eval(), images)
    report = export(model, "onnx", tmp_path / "int8.onnx", img_size=(128, 128), int8=True, calibration=images)
    assert report.top1_agreement >= 7 / 8
    assert any("int8 QDQ" in note for note in report.notes)


def test_torchscript_matches_at_another_size(v2, tmp_path):
    from mobilevit.export.torchscript import run_torchscript

    report = export(v2, "torchscript", tmp_path / "v2.pt", img_size=(128, 160), dynamic=True)
    assert report.max_abs_diff <= FP32_TOLERANCE
    x = structured_images(2, 224, 96, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(run_torchscript(report.path, x), v2(x), rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.slow
def test_executorch_fp32(v2, tmp_path):
    pytest.importorskip("executorch")
    report = export(v2, "executorch", tmp_path / "v2.pte", img_size=(64, 64))
    assert report.max_abs_diff <= FP32_TOLERANCE


def test_coreml_spec_validates_and_its_program_is_rank_5(v2, tmp_path):
    ct = pytest.importorskip("coremltools")
    report = export(v2, "coreml", tmp_path / "v2.mlpackage", img_size=(64, 96))
    spec = ct.utils.load_spec(str(report.path))
    assert [(o.name, list(o.type.multiArrayType.shape)) for o in spec.description.output] == [("logits", [1, 10])]
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    ranks = [
        out.type.tensorType.rank for op in block.operations for out in op.outputs if out.type.HasField("tensorType")
    ]
    assert ranks and max(ranks) <= MAX_RANK
    if sys.platform != "darwin":
        assert report.max_abs_diff is None


@pytest.mark.parametrize(
    ("backend", "compare"),
    [("eager", ("timm", "hf")), ("optimized", ("timm", "hf")), ("onnxruntime", ("timm",))],
)
def test_bench_runs_v2_against_its_peers(backend, compare):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    rows = bench("mobilevitv2_050", backend, img_size=(64, 64), compare=compare, rounds=1, iters=1)
    assert [r["impl"] for r in rows] == ["mobilevit", *compare]
    assert all(r["median_ms"] > 0 and r["model"] == "mobilevitv2_050" for r in rows)


def test_bench_cli_with_hf_peer(capsys):
    argv = ["bench", "--model", "mobilevitv2_050", "--compare", "timm,hf", "--img-size", "64", "64"]
    assert main([*argv, "--rounds", "1", "--iters", "1", "--json"]) == 0
    assert [row["impl"] for row in json.loads(capsys.readouterr().out)] == ["mobilevit", "timm", "hf"]
