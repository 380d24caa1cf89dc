"""optimize_for_inference: the same outputs as the original model, on every path it can take."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import mobilevit
from mobilevit import optimize_for_inference
from mobilevit.export.optimize import FusedConv2d, FusedLinear
from mobilevit.models.mobilevitv3 import V3_CONFIGS, V3_V2_CONFIGS
from mobilevit.testing import randomize_, structured_images

# every family: v1, v2 and both v3s
NAMES = ["mobilevit_xxs", "mobilevit_xs", "mobilevit_s", "mobilevitv2_050", "mobilevitv2_100"]
NAMES += [*V3_CONFIGS, *V3_V2_CONFIGS]


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


def test_traced_fallback_path_matches(models):
    """While tracing (TorchScript, ONNX) the modules run plain conv/linear ops with folded weights."""
    model = models["mobilevit_xxs"]
    fast = optimize_for_inference(model)
    x = structured_images(1, 160, 224, seed=3)
    with torch.inference_mode():
        traced = torch.jit.trace(fast, x)
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
