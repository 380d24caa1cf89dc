"""Outputs equal timm's and Hugging Face's MobileViT after converting their (random) weights."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import transformers

import mobilevit
from mobilevit.models.mobilevit import MODEL_CONFIGS
from mobilevit.testing import assert_matches, converted, hf_config, randomize_, structured_images

NAMES = sorted(MODEL_CONFIGS)
SIZES = [(256, 256), (200, 300)]
TOL = 1e-4


@pytest.fixture(scope="module")
def timm_models():
    return {n: randomize_(timm.create_model(n), seed=i) for i, n in enumerate(NAMES)}


@pytest.fixture(scope="module")
def hf_models():
    def calibrate(model):
        model(pixel_values=structured_images(4, 128, 128, seed=123))

    return {
        n: randomize_(transformers.MobileViTForImageClassification(hf_config(n)), 10 + i, calibrate)
        for i, n in enumerate(NAMES)
    }


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_matches_timm(timm_models, name, size):
    ref = timm_models[name]
    ours = converted(name, ref.state_dict(), "timm")
    x = structured_images(2, *size)
    with torch.no_grad():
        assert_matches(ours(x), ref(x))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_matches_hugging_face_on_bgr(hf_models, name, size):
    """Hugging Face's copies take BGR: ours on RGB equals theirs on the same image flipped."""
    ref = hf_models[name]
    ours = converted(name, ref.state_dict(), "hf")
    x = structured_images(2, *size, seed=1)
    with torch.no_grad():
        expected = ref(pixel_values=x.flip(1)).logits
        assert_matches(ours(x), expected)
        # The channel flip matters: without it the outputs differ, so the test above can fail.
        assert (ours(x.flip(1)) - expected).abs().max() > 1e-2


def test_hf_feature_maps_match(hf_models):
    """Every stage, not only the logits: our features_only maps equal HF's hidden states."""
    ref = hf_models["mobilevit_xs"]
    ours = mobilevit.create_model("mobilevit_xs", features_only=True).eval()
    ours.load_state_dict(
        {
            k: v
            for k, v in mobilevit.convert_state_dict(ref.state_dict(), "hf").items()
            if k.startswith(("stem", "stages"))
        }
    )
    x = structured_images(1, 224, 160, seed=2)
    with torch.no_grad():
        hidden = ref.mobilevit(x.flip(1), output_hidden_states=True).hidden_states
        for ours_map, ref_map in zip(ours(x), hidden, strict=True):
            assert (ours_map - ref_map).abs().max() <= TOL


def timm_to_cvnets_key(key: str) -> str | None:
    """The ml-cvnets v0.1 name of a timm key, written from the reference's key table (not from
    this package's converter), so the two mappings check each other."""
    rules = [
        (r"^stem\.conv\.", "conv_1.block.conv."),
        (r"^stem\.bn\.", "conv_1.block.norm."),
        (r"^final_conv\.conv\.", "conv_1x1_exp.block.conv."),
        (r"^final_conv\.bn\.", "conv_1x1_exp.block.norm."),
        (r"^head\.fc\.", "classifier.fc."),
        (r"\.conv1_1x1\.(conv|bn)\.", r".block.exp_1x1.block.\1."),
        (r"\.conv2_kxk\.(conv|bn)\.", r".block.conv_3x3.block.\1."),
        (r"\.conv3_1x1\.(conv|bn)\.", r".block.red_1x1.block.\1."),
        (r"\.conv_kxk\.(conv|bn)\.", r".local_rep.conv_3x3.block.\1."),
        (r"\.conv_1x1\.weight$", ".local_rep.conv_1x1.block.conv.weight"),
        (r"\.transformer\.(\d+)\.norm1\.", r".global_rep.\1.pre_norm_mha.0."),
        (r"\.transformer\.(\d+)\.attn\.qkv\.", r".global_rep.\1.pre_norm_mha.1.qkv_proj."),
        (r"\.transformer\.(\d+)\.attn\.proj\.", r".global_rep.\1.pre_norm_mha.1.out_proj."),
        (r"\.transformer\.(\d+)\.norm2\.", r".global_rep.\1.pre_norm_ffn.0."),
        (r"\.transformer\.(\d+)\.mlp\.fc1\.", r".global_rep.\1.pre_norm_ffn.1."),
        (r"\.transformer\.(\d+)\.mlp\.fc2\.", r".global_rep.\1.pre_norm_ffn.4."),
        (r"\.conv_proj\.(conv|bn)\.", r".conv_proj.block.\1."),
        (r"\.conv_fusion\.(conv|bn)\.", r".fusion.block.\1."),
        (r"\.bn\.", ".norm."),
        (r"^stages\.(\d)\.", lambda m: f"layer_{int(m.group(1)) + 1}."),
    ]
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def to_cvnets(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in timm_state.items():
        match = re.match(r"^stages\.(\d)\.1\.norm\.(weight|bias)$", key)
        if match:  # the final LayerNorm is global_rep.{depth}
            stage = int(match.group(1))
            depth = MODEL_CONFIGS["mobilevit_s"].transformer_depths[stage - 2]
            out[f"layer_{stage + 1}.1.global_rep.{depth}.{match.group(2)}"] = value
        else:
            out[timm_to_cvnets_key(key)] = value
    # Official weights were trained on BGR input: the stem of an RGB model, flipped, is a BGR model.
    out["conv_1.block.conv.weight"] = out["conv_1.block.conv.weight"].flip(1)
    return out


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cvnets_state_dict_loads_and_matches(timm_models, size):
    ref = timm_models["mobilevit_s"]
    cvnets_state = to_cvnets(ref.state_dict())
    assert any(k.startswith("layer_5.1.global_rep.3.") for k in cvnets_state)
    assert mobilevit.convert.detect_source(list(cvnets_state)) == "cvnets"
    ours = converted("mobilevit_s", cvnets_state, "auto")
    x = structured_images(2, *size, seed=3)
    with torch.no_grad():
        assert_matches(ours(x), ref(x))
