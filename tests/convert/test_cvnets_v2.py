"""ml-cvnets MobileViTv2 checkpoints load, and every port's v1 and v2 files are told apart."""

from __future__ import annotations

import re

import pytest
import timm
import torch
import transformers

import mobilevit
from mobilevit.convert import detect_source
from mobilevit.testing import assert_matches, converted, hf_config, hf_v2_config, randomize_, structured_images

# ``attn_blocks`` of layer3..layer5 in ml-cvnets' config/mobilevit_v2.py: the final GroupNorm is global_rep.{n}
CVNETS_ATTN_BLOCKS = {3: 2, 4: 4, 5: 3}
# timm -> ml-cvnets names, written from ml-cvnets' MobileViTv2 sources (not from this package's
# converter): ConvLayer2d is ``block.{conv,norm,act}``, InvertedResidual ``block.{exp_1x1,conv_3x3,red_1x1}``,
# MobileViTBlockv2's ``local_rep`` an unnamed Sequential, LinearAttnFFN ``pre_norm_attn`` = (GroupNorm,
# LinearSelfAttention, Dropout) and ``pre_norm_ffn`` = (GroupNorm, conv 1x1 + act, Dropout, conv 1x1,
# Dropout), and the classifier Sequential(GlobalPool, LinearLayer).
TIMM_TO_CVNETS_V2 = [
    (r"^stem\.(conv|bn)\.", r"conv_1.block.\1."),
    (r"^head\.fc\.", "classifier.1."),
    (r"\.conv1_1x1\.(conv|bn)\.", r".block.exp_1x1.block.\1."),
    (r"\.conv2_kxk\.(conv|bn)\.", r".block.conv_3x3.block.\1."),
    (r"\.conv3_1x1\.(conv|bn)\.", r".block.red_1x1.block.\1."),
    (r"\.conv_kxk\.(conv|bn)\.", r".local_rep.0.block.\1."),
    (r"\.conv_1x1\.weight$", ".local_rep.1.block.conv.weight"),
    (r"\.transformer\.(\d+)\.norm1\.", r".global_rep.\1.pre_norm_attn.0."),
    (r"\.transformer\.(\d+)\.attn\.(qkv_proj|out_proj)\.", r".global_rep.\1.pre_norm_attn.1.\2.block.conv."),
    (r"\.transformer\.(\d+)\.norm2\.", r".global_rep.\1.pre_norm_ffn.0."),
    (r"\.transformer\.(\d+)\.mlp\.fc1\.", r".global_rep.\1.pre_norm_ffn.1.block.conv."),
    (r"\.transformer\.(\d+)\.mlp\.fc2\.", r".global_rep.\1.pre_norm_ffn.3.block.conv."),
    (r"\.conv_proj\.(conv|bn)\.", r".conv_proj.block.\1."),
    (r"\.bn\.", ".norm."),
    (r"^stages\.(\d)\.", lambda m: f"layer_{int(m.group(1)) + 1}."),
]


def to_cvnets_v2(timm_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in timm_state.items():
        final_norm = re.match(r"^stages\.(\d)\.1\.norm\.(weight|bias)$", key)
        if final_norm:
            layer = int(final_norm.group(1)) + 1
            out[f"layer_{layer}.1.global_rep.{CVNETS_ATTN_BLOCKS[layer]}.{final_norm.group(2)}"] = value
            continue
        for pattern, replacement in TIMM_TO_CVNETS_V2:
            key = re.sub(pattern, replacement, key)
        out[key] = value
    # Official weights were trained on BGR input: the stem of an RGB model, flipped, is a BGR model.
    out["conv_1.block.conv.weight"] = out["conv_1.block.conv.weight"].flip(1)
    return out


@pytest.fixture(scope="module")
def timm_v2():
    return randomize_(timm.create_model("mobilevitv2_050"), seed=4).eval()


@pytest.mark.parametrize("size", [(256, 256), (200, 300)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cvnets_v2_state_dict_loads_and_matches_timm(timm_v2, size):
    cvnets_state = to_cvnets_v2(timm_v2.state_dict())
    assert "layer_5.1.global_rep.2.pre_norm_ffn.3.block.conv.weight" in cvnets_state
    assert "layer_4.1.global_rep.4.weight" in cvnets_state
    ours = converted("mobilevitv2_050", cvnets_state)  # strict: every key maps onto ours
    x = structured_images(2, *size, seed=3)
    with torch.no_grad():
        ref = timm_v2(x)
        assert_matches(ours(x), ref)
        assert (ours(x.flip(1)) - ref).abs().max().item() > 1e-2  # the stem flip is what makes it match


def test_every_ports_v1_and_v2_files_are_detected(timm_v2):
    cvnets_v1 = ["conv_1.block.conv.weight", "layer_3.1.global_rep.0.pre_norm_mha.0.weight", "classifier.fc.weight"]
    states = {
        "timm": [timm.create_model("mobilevit_xxs").state_dict(), timm_v2.state_dict()],
        "hf": [
            transformers.MobileViTForImageClassification(hf_config("mobilevit_xxs")).state_dict(),
            transformers.MobileViTV2ForImageClassification(hf_v2_config("mobilevitv2_050")).state_dict(),
        ],
        "cvnets": [dict.fromkeys(cvnets_v1), to_cvnets_v2(timm_v2.state_dict())],
        "mobilevit": [mobilevit.create_model(n).state_dict() for n in ("mobilevit_xxs", "mobilevitv2_050")],
    }
    for source, (v1, v2) in states.items():
        assert (detect_source(list(v1)), detect_source(list(v2))) == (source, source)
