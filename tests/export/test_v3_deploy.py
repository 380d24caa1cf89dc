"""MobileViTv3 deploys and trains like v1 and v2: optimize_for_inference, every export format with fp32
parity, int8 ONNX, bench (with a clear error for peers, which have no v3), predict, info, training with
the multi-scale sampler, and the DeepLabv3 / SSDLite heads on v3 backbones."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from deploy_helpers import onnx_ops_and_ranks, with_fitted_head
from PIL import Image
from torch import nn

from mobilevit import create_model, optimize_for_inference
from mobilevit.cli import main
from mobilevit.data.sampler import MultiScaleBatchSampler
from mobilevit.export import FP32_TOLERANCE, export
from mobilevit.export.bench import bench
from mobilevit.export.optimize import FusedConv2d, FusedLinear
from mobilevit.models.layers import ConvNormAct
from mobilevit.models.mobilevit_block import FeedForward
from mobilevit.models.mobilevitv2 import MobileViTV2Block
from mobilevit.models.mobilevitv3 import V3_MODELS, MobileViTV3Block, MobileViTV3V2Block
from mobilevit.models.summary import count_params
from mobilevit.testing import randomize_, structured_images

EXPORTED = ["mobilevitv3_xxs", "mobilevitv3_050"]  # one of each family: on v1 and on v2
MAX_RANK = 5  # Core ML's limit
ONEDNN_NAMES = {nn.SiLU: "swish", nn.ReLU: "relu", nn.Identity: "none"}


@pytest.fixture(scope="module")
def models():
    return {name: randomize_(create_model(name), seed=i).eval() for i, name in enumerate(V3_MODELS)}


@pytest.fixture(scope="module")
def classifiers():
    """Small randomised 10-class v3 classifiers for the exports (as the v1 and v2 export tests use)."""
    return {name: randomize_(create_model(name, num_classes=10), seed=5).eval() for name in EXPORTED}


@pytest.mark.parametrize("name", EXPORTED)
def test_optimize_fuses_every_conv_with_its_activation(models, name):
    """Every ConvNormAct (the v3 blocks' depthwise local conv, 1x1 projection and fusion included)
    becomes one FusedConv2d carrying the same activation: none is left unfused, none is dropped."""
    model = models[name]
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear, nn.SiLU)) for m in fast.modules())
    for path, module in model.named_modules():
        if isinstance(module, ConvNormAct):
            fused = fast.get_submodule(path)
            assert isinstance(fused, FusedConv2d), path
            assert fused.activation == ONEDNN_NAMES[type(module.act)], path
            assert fused.groups == module.conv.groups, path
    blocks = [m for m in fast.modules() if isinstance(m, (MobileViTV3Block, MobileViTV3V2Block))]
    assert len(blocks) == 3
    for block in blocks:
        local = block.local_rep.conv_kxk
        assert local.activation == "swish" and local.groups == local.weight.shape[0]  # depthwise, SiLU kept
        fusion = getattr(block, "fusion", block.conv_proj)  # the v2-based block fuses in its projection
        assert fusion.weight.shape[-2:] == (1, 1)


def test_optimize_fuses_the_v1_based_feed_forward(models):
    ffns = [m for m in optimize_for_inference(models["mobilevitv3_xxs"]).modules() if isinstance(m, FeedForward)]
    assert len(ffns) == 2 + 4 + 3  # transformer depths of layer3..layer5
    assert all(isinstance(f.fc1, FusedLinear) and f.fc1.activation == "swish" for f in ffns)
    assert all(isinstance(f.act, nn.Identity) and f.fc2.activation == "none" for f in ffns)


@pytest.fixture(scope="module")
def onnx_dynamic(classifiers, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = tmp_path_factory.mktemp("onnx")
    return {name: export(model, "onnx", folder / f"{name}.onnx", dynamic=True) for name, model in classifiers.items()}


@pytest.mark.parametrize("name", EXPORTED)
@pytest.mark.parametrize("shape", [(3, 224, 320), (2, 100, 130)], ids=["batch3-224x320", "sides-not-multiples-of-32"])
def test_onnx_dynamic_matches_at_unseen_sizes(classifiers, onnx_dynamic, name, shape):
    from mobilevit.export.onnx import run_onnx

    assert onnx_dynamic[name].max_abs_diff <= FP32_TOLERANCE
    x = structured_images(*shape, seed=7)
    with torch.no_grad():
        expected = classifiers[name](x)
    torch.testing.assert_close(run_onnx(onnx_dynamic[name].path, x, threads=1), expected, rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.parametrize("name", EXPORTED)
def test_onnx_static_matches(classifiers, name, tmp_path):
    pytest.importorskip("onnxruntime")
    report = export(classifiers[name], "onnx", tmp_path / f"{name}.onnx")
    assert report.max_abs_diff <= FP32_TOLERANCE


def test_onnx_graph_of_the_v2_based_v3_is_core_ml_friendly(onnx_dynamic):
    """As v2's: the unfold/fold is rank <= 5 and there is no Col2Im / Im2Col (the v1-based v3 keeps
    v1's rank-6 patch reshapes; Core ML's converter splits those, see the Core ML test)."""
    ops, ranks = onnx_ops_and_ranks(onnx_dynamic["mobilevitv3_050"].path)
    assert not ops & {"Col2Im", "Im2Col"}
    assert {"Reshape", "Transpose"} <= ops
    assert {k: r for k, r in ranks.items() if r > MAX_RANK} == {}


def test_onnx_int8_reports_top1_agreement(tmp_path):
    pytest.importorskip("onnxruntime")
    images = structured_images(8, 128, 128, seed=1)
    model = with_fitted_head(randomize_(create_model("mobilevitv3_xxs")).eval(), images)
    report = export(model, "onnx", tmp_path / "int8.onnx", img_size=(128, 128), int8=True, calibration=images)
    assert report.top1_agreement >= 7 / 8
    assert any("int8 QDQ" in note for note in report.notes)


@pytest.mark.parametrize("name", EXPORTED)
def test_torchscript_matches_at_another_size(classifiers, name, tmp_path):
    from mobilevit.export.torchscript import run_torchscript

    model = classifiers[name]
    report = export(model, "torchscript", tmp_path / f"{name}.pt", img_size=(128, 160), dynamic=True)
    assert report.max_abs_diff <= FP32_TOLERANCE
    x = structured_images(2, 224, 96, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(run_torchscript(report.path, x), model(x), rtol=0, atol=FP32_TOLERANCE)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPORTED)
def test_executorch_fp32(classifiers, name, tmp_path):
    """15-25 s each on one CPU thread."""
    pytest.importorskip("executorch")
    report = export(classifiers[name], "executorch", tmp_path / f"{name}.pte", img_size=(64, 64))
    assert report.max_abs_diff <= FP32_TOLERANCE


@pytest.mark.parametrize("name", EXPORTED)
def test_coreml_spec_validates_and_its_program_is_rank_5(classifiers, name, tmp_path):
    ct = pytest.importorskip("coremltools")
    report = export(classifiers[name], "coreml", tmp_path / f"{name}.mlpackage", img_size=(64, 96))
    spec = ct.utils.load_spec(str(report.path))
    assert [(o.name, list(o.type.multiArrayType.shape)) for o in spec.description.output] == [("logits", [1, 10])]
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    ranks = [
        out.type.tensorType.rank for op in block.operations for out in op.outputs if out.type.HasField("tensorType")
    ]
    assert ranks and max(ranks) <= MAX_RANK
    if sys.platform != "darwin":
        assert report.max_abs_diff is None


@pytest.mark.parametrize("backend", ["eager", "optimized", "onnxruntime"])
def test_bench_runs_v3(backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    (row,) = bench("mobilevitv3_xxs", backend, img_size=(64, 64), rounds=1, iters=1)
    assert (row["impl"], row["backend"], row["model"]) == ("mobilevit", backend, "mobilevitv3_xxs")
    assert row["median_ms"] > 0 and row["gflop_per_s"] > 0


def test_bench_cli_says_peers_have_no_v3(capsys):
    argv = ["bench", "--model", "mobilevitv3_050", "--compare", "timm,hf", "--img-size", "64", "64"]
    assert main([*argv, "--rounds", "1", "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot compare mobilevitv3_050 with timm, hf" in err and "without --compare" in err


def test_info_prints_params_and_macs(capsys):
    assert main(["info", "mobilevitv3_s"]) == 0
    out = capsys.readouterr().out
    params = re.search(r"parameters: ([\d,]+)", out)
    macs = re.search(r"MACs: +([\d.]+) G", out)
    assert params and int(params[1].replace(",", "")) == count_params(create_model("mobilevitv3_s"))
    assert macs and float(macs[1]) > 0


def make_image_folder(root: Path, per_class: int = 12, size: int = 40) -> Path:
    """Two classes, bright and dark noisy squares, as tests/engine/test_train.py makes them."""
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", per_class), ("val", 4)):
        for label, level in (("bright", 200), ("dark", 60)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                noise = torch.randint(-40, 40, (size, size, 3), generator=gen)
                Image.fromarray((noise + level).clamp(0, 255).to(torch.uint8).numpy()).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("name", "block"), [("mobilevitv3_xxs", MobileViTV3Block), ("mobilevitv2_050", MobileViTV2Block)]
)
def test_trains_one_epoch_on_multi_scale_batches(tmp_path, monkeypatch, name, block):
    """The multi-scale sampler feeds v3 (and v2) batches of several sizes, each with its own batch size."""
    from mobilevit.engine.config import load_config
    from mobilevit.engine.train import train
    from mobilevit.models.factory import from_pretrained

    shapes: list[tuple[int, int]] = []
    draw = MultiScaleBatchSampler.__iter__

    def recording(sampler):
        for batch in draw(sampler):
            shapes.append((batch[0][0], len(batch)))
            yield batch

    monkeypatch.setattr(MultiScaleBatchSampler, "__iter__", recording)
    cfg = load_config(
        model=name, data=str(make_image_folder(tmp_path / "data")), output=str(tmp_path / "run"),
        epochs=1, img_size=32, multi_scale=True, min_size=32, max_size=64, size_divisor=16, batch_size=4,
        warmup_steps=1, workers=0, ema_momentum=0.1,
    )  # fmt: skip
    (metrics,) = train(cfg)
    assert metrics["epoch"] == 1 and torch.isfinite(torch.tensor(metrics["train_loss"]))
    assert len({size for size, _ in shapes}) > 1
    largest_batch = {size: max(n for s, n in shapes if s == size) for size, _ in shapes}
    assert largest_batch[min(largest_batch)] > largest_batch[max(largest_batch)]  # bigger images, smaller batches
    assert isinstance(from_pretrained(tmp_path / "run" / "model").stages[2][1], block)


def test_deeplabv3_on_v3_trains_and_segments():
    model = create_model("deeplabv3_mobilevitv3_xxs", num_classes=5).train()
    x, masks = torch.rand(2, 3, 96, 128), torch.randint(0, 5, (2, 96, 128))
    logits = model(x)
    assert logits.shape == (2, 5, 96, 128)
    loss = F.cross_entropy(logits, masks)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_ssdlite_on_v3_trains_and_detects():
    model = create_model("ssdlite_mobilevitv3_050", num_classes=3, img_size=128).train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 100, 150)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    losses = model(images, targets)
    assert set(losses) == {"bbox_regression", "classification"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(o["boxes"].shape[1] == 4 and len(o["boxes"]) == len(o["scores"]) for o in out)
