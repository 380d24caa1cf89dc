"""optimize_for_inference (mobilevit.export.optimize): the same outputs as the original model, on every
path it can take, and every family's convolutions and feed-forwards fused with their activations."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mobilevit
from mobilevit import optimize_for_inference
from mobilevit.export.optimize import FusedConv2d, FusedLinear
from mobilevit.models.layers import ConvNormAct
from mobilevit.models.mobilevit_block import FeedForward
from mobilevit.models.mobilevitv2 import ConvFeedForward
from mobilevit.models.mobilevitv3 import V3_CONFIGS, V3_V2_CONFIGS, MobileViTV3Block, MobileViTV3V2Block
from mobilevit.testing import randomize_, structured_images

# every family: v1, v2 and both v3s
NAMES = ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050", "mobilevitv2_100"]
NAMES += [*V3_CONFIGS, *V3_V2_CONFIGS]
ONEDNN_NAMES = {nn.SiLU: "swish", nn.ReLU: "relu", nn.Identity: "none"}


@pytest.fixture(scope="module")
def models():
    return {name: randomize_(mobilevit.create_model(name), seed=i).eval() for i, name in enumerate(NAMES)}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("size", [(256, 256), (200, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_original_within_1e4(models, name, size):
    """Every family (v1, v2, both v3s); 200x300 gives odd maps at strides 16 and 32, so the blocks'
    resize runs too."""
    model = models[name]
    fast = optimize_for_inference(model)
    x = structured_images(2, *size, seed=7)
    with torch.inference_mode():
        expected = model(x)
        assert expected.std() > 0.1  # the reference depends on the input: a wrong fold would show
        torch.testing.assert_close(fast(x), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)), expected, atol=1e-4, rtol=0)


def test_folds_batchnorm_freezes_and_leaves_the_original_untouched(models):
    model = models["mobilevit_xxs"]
    before = copy.deepcopy(model.state_dict())
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in fast.modules())
    assert any(isinstance(m, FusedConv2d) for m in fast.modules())
    assert any(isinstance(m, FusedLinear) for m in fast.modules())
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_v2_fuses_every_conv_and_keeps_the_group_norms(models):
    model = models["mobilevitv2_050"]
    fast = optimize_for_inference(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.Conv2d, nn.Linear, nn.SiLU)) for m in fast.modules())
    group_norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len([m for m in fast.modules() if isinstance(m, nn.GroupNorm)]) == len(group_norms) == 21
    ffns = [m for m in fast.modules() if isinstance(m, ConvFeedForward)]
    assert ffns and all(f.fc1.activation == "swish" and isinstance(f.act, nn.Identity) for f in ffns)
    attn = fast.stages[2][1].global_rep.layers[0].attn
    assert isinstance(attn.qkv_proj, FusedConv2d) and isinstance(attn.out_proj, FusedConv2d)


@pytest.mark.parametrize("name", ["mobilevitv3_xxs", "mobilevitv3_050"])  # v3 on v1 and v3 on v2
def test_v3_fuses_every_conv_with_its_activation(models, name):
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


def test_v3_on_v1_fuses_the_feed_forward(models):
    ffns = [m for m in optimize_for_inference(models["mobilevitv3_xxs"]).modules() if isinstance(m, FeedForward)]
    assert len(ffns) == 2 + 4 + 3  # transformer depths of layer3..layer5
    assert all(isinstance(f.fc1, FusedLinear) and f.fc1.activation == "swish" for f in ffns)
    assert all(isinstance(f.act, nn.Identity) and f.fc2.activation == "none" for f in ffns)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050"])
def test_traced_fallback_path_matches(models, name):
    """While tracing (TorchScript, ONNX) the modules run plain conv/linear ops with folded weights."""
    model = models[name]
    fast = optimize_for_inference(model)
    x = structured_images(1, 160, 224, seed=3)
    with torch.inference_mode():
        # On v2, check_trace would rerun the module eagerly, on the oneDNN kernels the trace replaces:
        # the comparison that matters is the one below, against the original model
        traced = torch.jit.trace(fast, x, check_trace=name != "mobilevitv2_050")
        assert not any("mkldnn" in str(node.kind()) for node in traced.inlined_graph.nodes())
        torch.testing.assert_close(traced(x), model(x), atol=1e-4, rtol=0)


def test_copy_after_use_and_features_only():
    fast = optimize_for_inference(randomize_(mobilevit.create_model("mobilevit_xxs", features_only=True)).eval())
    x = structured_images(1, 128, 128)
    with torch.inference_mode():
        first = fast(x)
        again = copy.deepcopy(fast)(x)  # the oneDNN weight copies are rebuilt, not copied
    assert len(first) == 5
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation"):
        FusedConv2d(nn.Conv2d(3, 4, 1), "gelu")
