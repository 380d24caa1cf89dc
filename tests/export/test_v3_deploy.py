"""MobileViTv3 deploys and trains like v1 and v2: optimize_for_inference, bench (with a clear error for
peers, which have no v3), info, training with the multi-scale sampler, and the DeepLabv3 / SSDLite
heads on v3 backbones (its exports are tested with v2's in test_family_deploy.py)."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobilevit import create_model, optimize_for_inference
from mobilevit.cli import main
from mobilevit.data.sampler import MultiScaleBatchSampler
from mobilevit.export.bench import bench
from mobilevit.export.optimize import FusedConv2d, FusedLinear
from mobilevit.models.layers import ConvNormAct
from mobilevit.models.mobilevit_block import FeedForward
from mobilevit.models.mobilevitv2 import MobileViTV2Block
from mobilevit.models.mobilevitv3 import MobileViTV3Block, MobileViTV3V2Block
from mobilevit.models.summary import count_params
from mobilevit.testing import randomize_, write_image_folder

FAMILIES = ["mobilevitv3_xxs", "mobilevitv3_050"]  # one of each family: on v1 and on v2
ONEDNN_NAMES = {nn.SiLU: "swish", nn.ReLU: "relu", nn.Identity: "none"}


@pytest.fixture(scope="module")
def models():
    return {name: randomize_(create_model(name), seed=i).eval() for i, name in enumerate(FAMILIES)}


@pytest.mark.parametrize("name", FAMILIES)
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


# 10 s for onnxruntime: test_bench runs that backend on v1 and test_family_deploy checks the v3 export
@pytest.mark.parametrize("backend", ["eager", "optimized", pytest.param("onnxruntime", marks=pytest.mark.slow)])
def test_bench_runs_v3(backend):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    row, *baseline = bench("mobilevitv3_xxs", backend, img_size=(64, 64), rounds=1, iters=1)
    assert (row["impl"], row["backend"], row["model"]) == ("mobilevit", backend, "mobilevitv3_xxs")
    assert row["median_ms"] > 0 and row["gflop_per_s"] > 0
    assert [(r["impl"], r["backend"]) for r in baseline] == ([("mobilevit", "eager")] if backend == "optimized" else [])


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
    data = write_image_folder(tmp_path / "data", per_class=12, val_per_class=4)
    cfg = load_config(
        model=name, data=str(data), output=str(tmp_path / "run"),
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
