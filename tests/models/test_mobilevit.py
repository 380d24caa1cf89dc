"""The v1 family: published sizes, timm-style API, any input size, and clear errors."""

from __future__ import annotations

import pytest
import timm
import torch

import mobilevit
from mobilevit.models.backbones import BACKBONES
from mobilevit.models.mobilevit import MODEL_CONFIGS
from mobilevit.models.summary import count_macs, count_params
from mobilevit.testing import structured_images

# Published parameter counts with 1000 classes (reference table; timm agrees, checked below).
PUBLISHED_PARAMS = {"mobilevit_xxs": 1_272_024, "mobilevit_xs": 2_317_848, "mobilevit_s": 5_578_632}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_equals_published_and_timm(name):
    model = mobilevit.create_model(name)
    assert count_params(model) == PUBLISHED_PARAMS[name]
    assert count_params(model) == count_params(timm.create_model(name))


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevit_s"])
def test_macs_equal_timm_under_the_same_counter(name):
    x = torch.zeros(1, 3, 256, 256)
    ours = count_macs(mobilevit.create_model(name).eval(), x)
    assert ours == count_macs(timm.create_model(name).eval(), x)


def test_list_models():
    assert mobilevit.list_models("mobilevit_*", task="classification") == [
        "mobilevit_s",
        "mobilevit_xs",
        "mobilevit_xxs",
    ]
    assert len(mobilevit.list_models("mobilevitv2_*", task="classification")) == 7
    assert mobilevit.list_models("mobilevit_*xs") == ["mobilevit_xs", "mobilevit_xxs"]
    assert set(mobilevit.list_models("deeplabv3_*")) == {f"deeplabv3_{n}" for n in BACKBONES}
    assert mobilevit.list_models("resnet*") == []


@pytest.mark.parametrize(
    "shape", [(1, 3, 256, 256), (3, 3, 224, 224), (2, 3, 200, 300), (1, 3, 33, 47), (1, 3, 32, 32)]
)
def test_any_batch_and_input_size(shape):
    model = mobilevit.create_model("mobilevit_xxs", num_classes=7).eval()
    with torch.no_grad():
        out = model(structured_images(shape[0], *shape[2:]))
    assert out.shape == (shape[0], 7)
    assert torch.isfinite(out).all()


def test_forward_features_and_head():
    model = mobilevit.create_model("mobilevit_xs").eval()
    x = structured_images(2, 256, 192)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, 384, 8, 6)
        pooled = model.forward_head(features, pre_logits=True)
        assert pooled.shape == (2, 384)
        assert torch.equal(model.forward_head(features), model(x))
        assert torch.allclose(model.get_classifier()(pooled), model(x))


def test_reset_classifier():
    model = mobilevit.create_model("mobilevit_xxs")
    model.reset_classifier(10)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 10)
    assert model.num_classes == 10 and model.pretrained_cfg["num_classes"] == 10
    model.reset_classifier(0)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 320)


def test_pretrained_cfg():
    cfg = mobilevit.create_model("mobilevit_s").pretrained_cfg
    assert cfg["input_size"] == (3, 256, 256)
    assert cfg["mean"] == (0.0, 0.0, 0.0) and cfg["std"] == (1.0, 1.0, 1.0)
    assert cfg["crop_pct"] == 0.9
    assert cfg["interpolation"] == "bicubic"
    assert cfg["channel_order"] == "RGB"
    assert cfg["num_classes"] == 1000


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_features_only(name):
    model = mobilevit.create_model(name, features_only=True).eval()
    cfg = MODEL_CONFIGS[name]
    assert model.feature_info.channels() == list(cfg.channels)
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        features = model(structured_images(2, 256, 320))
    assert [tuple(f.shape) for f in features] == [
        (2, c, 256 // s, 320 // s) for c, s in zip(cfg.channels, [2, 4, 8, 16, 32], strict=True)
    ]


def test_features_only_out_indices_and_odd_sizes():
    model = mobilevit.create_model("mobilevit_xxs", features_only=True, out_indices=(2, 4)).eval()
    assert model.feature_info.reduction() == [8, 32]
    with torch.no_grad():
        features = model(torch.rand(1, 3, 200, 300))
    # Sides round up at each stride-2 conv: 200 -> 100, 50, 25, 13, 7 and 300 -> 150, 75, 38, 19, 10.
    assert [tuple(f.shape[-2:]) for f in features] == [(25, 38), (7, 10)]
    with pytest.raises(ValueError, match="out_indices"):
        mobilevit.create_model("mobilevit_xxs", features_only=True, out_indices=(5,))


def test_features_match_the_classifier_trunk():
    classifier = mobilevit.create_model("mobilevit_xxs").eval()
    backbone = mobilevit.create_model("mobilevit_xxs", features_only=True).eval()
    missing, unexpected = backbone.load_state_dict(classifier.state_dict(), strict=False)
    assert not missing and all(k.startswith(("final_conv.", "head.")) for k in unexpected)
    x = structured_images(1, 96, 128)
    with torch.no_grad():
        expected = classifier.forward_features(x)
        assert torch.allclose(classifier.final_conv(backbone(x)[-1]), expected)


def test_overrides_change_the_config():
    model = mobilevit.create_model("mobilevit_xxs", in_chans=1, drop_rate=0.3)
    assert model.stem.conv.in_channels == 1 and model.head.drop.p == 0.3
    assert model(torch.rand(1, 1, 64, 64)).shape == (1, 1000)
    assert model.pretrained_cfg["input_size"] == (1, 256, 256)


@pytest.mark.parametrize("name", ["mobilevit_xxs", "mobilevitv2_050", "mobilevitv3_xxs"])
def test_transformer_dropout_sits_where_ml_cvnets_puts_it(name):
    """ml-cvnets' ``dropout`` follows attention and the FFN's second linear; its ``ffn_dropout``, between
    the two linears, is 0 in the published recipes: in training, SiLU's output reaches fc2 unchanged."""

    def fc2_input_zeros(model) -> float:
        seen = {}
        fc2 = next(m for n, m in model.named_modules() if n.endswith("mlp.fc2"))
        fc2.register_forward_pre_hook(lambda _, args: seen.setdefault("x", args[0]))
        model.train()(torch.rand(2, 3, 64, 64))
        return (seen["x"] == 0).float().mean().item()

    torch.manual_seed(0)
    model = mobilevit.create_model(name, transformer_dropout=0.5)
    assert fc2_input_zeros(model) == 0.0
    drops = {n: m.p for n, m in model.named_modules() if ".global_rep." in n and isinstance(m, torch.nn.Dropout)}
    assert {p for n, p in drops.items() if n.endswith("mlp.drop1")} == {0.0}
    assert {p for n, p in drops.items() if n.endswith(("mlp.drop2", "attn.proj_drop", ".drop"))} == {0.5}
    assert fc2_input_zeros(mobilevit.create_model(name, ffn_dropout=0.5)) > 0.3


def test_training_step_runs():
    model = mobilevit.create_model("mobilevit_xxs", num_classes=3)
    loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, 64, 64)), torch.tensor([0, 2]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'mobilevit_m'.*mobilevit_s, mobilevit_xs, mobilevit_xxs"):
        mobilevit.create_model("mobilevit_m")


def test_unknown_override_lists_valid_options():
    with pytest.raises(ValueError, match="unknown option.*dropout_rate.*valid options.*drop_rate"):
        mobilevit.create_model("mobilevit_s", dropout_rate=0.2)


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 256, 256), "expected a 4-D input \\[batch, 3, height, width\\], got 3-D"),
        ((1, 1, 3, 256, 256), "got 5-D"),
        ((1, 1, 256, 256), "expected 3 input channels, got 1"),
        ((1, 4, 256, 256), "expected 3 input channels, got 4"),
        ((1, 3, 31, 256), "at least 32"),
    ],
)
@pytest.mark.parametrize("features_only", [False, True])
def test_bad_input_raises_value_error(shape, message, features_only):
    model = mobilevit.create_model("mobilevit_xxs", features_only=features_only)
    with pytest.raises(ValueError, match=message):
        model(torch.rand(shape))


def test_stage_layout_is_config_data(tmp_path):
    """How many MV2 blocks layer1 and layer2 hold is a config field (v1: 1, 3; v2: 1, 2), so every
    family shares one stage builder and a layout change survives save/load."""
    assert [len(s) for s in mobilevit.create_model("mobilevit_xxs").stages[:2]] == [1, 3]
    assert [len(s) for s in mobilevit.create_model("mobilevitv2_050").stages[:2]] == [1, 2]
    model = mobilevit.create_model("mobilevit_xxs", mv2_blocks=(2, 2), num_classes=3)
    assert [len(s) for s in model.stages[:2]] == [2, 2]
    model.save_pretrained(tmp_path)
    again = mobilevit.from_pretrained(tmp_path)
    x = torch.rand(2, 3, 64, 64)
    assert torch.equal(model.eval()(x), again.eval()(x))
