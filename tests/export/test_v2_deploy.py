"""MobileViTv2 deploys like v1: optimize_for_inference fuses it, and bench runs it against timm and
Hugging Face (its exports are tested with v3's in test_family_deploy.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from mobilevit import create_model, optimize_for_inference
from mobilevit.cli import main
from mobilevit.export.bench import bench
from mobilevit.export.optimize import FusedConv2d
from mobilevit.models.mobilevitv2 import ConvFeedForward
from mobilevit.testing import randomize_, structured_images


@pytest.fixture(scope="module")
def model():
    return randomize_(create_model("mobilevitv2_050"), seed=0).eval()


def test_optimize_fuses_every_conv_and_keeps_the_group_norms(model):
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear, nn.SiLU)) for m in fast.modules())
    group_norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len([m for m in fast.modules() if isinstance(m, nn.GroupNorm)]) == len(group_norms) == 21
    ffns = [m for m in fast.modules() if isinstance(m, ConvFeedForward)]
    assert ffns and all(f.fc1.activation == "swish" and isinstance(f.act, nn.Identity) for f in ffns)
    attn = fast.stages[2][1].global_rep.layers[0].attn
    assert isinstance(attn.qkv_proj, FusedConv2d) and isinstance(attn.out_proj, FusedConv2d)


def test_optimized_traced_fallback_matches(model):
    x = structured_images(1, 160, 224, seed=3)
    with torch.inference_mode():
        # check_trace would rerun the module eagerly, on the oneDNN kernels the trace replaces: the
        # comparison that matters is the one below, against the original model
        traced = torch.jit.trace(optimize_for_inference(model), x, check_trace=False)
        assert not any("mkldnn" in str(node.kind()) for node in traced.inlined_graph.nodes())
        torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("backend", "compare"),
    [
        ("eager", ("timm", "hf")),
        ("optimized", ("timm", "hf")),
        # 15 s: both exports; test_bench runs the same backend on v1 and test_family_deploy the v2 export
        pytest.param("onnxruntime", ("timm",), marks=pytest.mark.slow),
    ],
)
def test_bench_runs_v2_against_its_peers(backend, compare):
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    rows = bench("mobilevitv2_050", backend, img_size=(64, 64), compare=compare, rounds=1, iters=1)
    assert (rows[0]["impl"], rows[0]["backend"]) == ("mobilevit", backend)
    assert [r["impl"] for r in rows if r["impl"] != "mobilevit"] == list(compare)
    assert all(r["median_ms"] > 0 and r["model"] == "mobilevitv2_050" for r in rows)


def test_bench_cli_with_hf_peer(capsys):
    argv = ["bench", "--model", "mobilevitv2_050", "--compare", "timm,hf", "--img-size", "64", "64"]
    assert main([*argv, "--rounds", "1", "--iters", "1", "--json"]) == 0
    assert [row["impl"] for row in json.loads(capsys.readouterr().out)["rows"]] == ["mobilevit", "timm", "hf"]
