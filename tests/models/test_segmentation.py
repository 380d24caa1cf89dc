"""DeepLabv3-MobileViT: Hugging Face parity, ml-cvnets keys, the paper's sizes and the API."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import transformers

import mobilevit
from mobilevit.models.mobilevit import MODEL_CONFIGS
from mobilevit.models.segmentation import SEGMENTATION_MODELS
from mobilevit.testing import assert_matches, hf_config, hf_v2_config, randomize_, structured_images

TOL = 1e-4
PAPER_PARAMS_M = {"deeplabv3_mobilevit_xxs": 1.9, "deeplabv3_mobilevit_xs": 2.9, "deeplabv3_mobilevit_s": 6.4}


def hf_segmenter(name: str, output_stride: int = 16, seed: int = 0) -> transformers.MobileViTForSemanticSegmentation:
    config = hf_config(SEGMENTATION_MODELS[name])
    config.num_labels = 21
    config.output_stride = output_stride

    def calibrate(model):
        model(pixel_values=structured_images(4, 128, 128, seed=123))

    return randomize_(transformers.MobileViTForSemanticSegmentation(config), seed, calibrate)


@pytest.mark.parametrize(
    ("name", "output_stride", "size"),
    [
        ("deeplabv3_mobilevit_xxs", 16, (256, 256)),
        ("deeplabv3_mobilevit_xs", 16, (200, 300)),
        ("deeplabv3_mobilevit_s", 16, (256, 256)),
        ("deeplabv3_mobilevit_xxs", 8, (160, 224)),
    ],
)
def test_matches_hugging_face(name, output_stride, size):
    """Converted random weights give HF's logits (HF takes BGR, ours RGB), before and after upsampling."""
    ref = hf_segmenter(name, output_stride)
    ours = mobilevit.create_model(name, output_stride=output_stride, pretrained=None).eval()
    ours.load_state_dict(mobilevit.convert_state_dict(ref.state_dict()))
    x = structured_images(2, *size, seed=4)
    with torch.no_grad():
        expected = ref(pixel_values=x.flip(1)).logits
        assert_matches(ours.forward_logits(x), expected)
        upsampled = F.interpolate(expected, size=size, mode="bilinear", align_corners=False)
        assert_matches(ours(x), upsampled)
    assert expected.shape[-2:] == tuple(-(-s // output_stride) for s in size)


def mv2_name(match: re.Match) -> str:
    return {"expand_1x1": ".exp_1x1.block.", "conv_3x3": ".conv_3x3.block.", "reduce_1x1": ".red_1x1.block."}[match[1]]


def hf_to_cvnets_key(key: str, depth_of: dict[int, int]) -> str:
    """The ml-cvnets name of a Hugging Face key, written from the two key tables of the reference
    (and ml-cvnets' ASPP module names), not from this package's converter."""
    match = re.match(r"^mobilevit\.encoder\.layer\.(\d)\.layernorm\.(weight|bias)$", key)
    if match:  # the final LayerNorm is global_rep.{depth}
        stage = int(match.group(1))
        return f"encoder.layer_{stage + 1}.1.global_rep.{depth_of[stage]}.{match.group(2)}"
    rules = [
        (r"^mobilevit\.conv_stem\.", "encoder.conv_1.block."),
        (r"^mobilevit\.encoder\.layer\.(\d)\.layer\.(\d)\.", lambda m: f"encoder.layer_{int(m[1]) + 1}.{m[2]}.block."),
        (
            r"^mobilevit\.encoder\.layer\.(\d)\.downsampling_layer\.",
            lambda m: f"encoder.layer_{int(m[1]) + 1}.0.block.",
        ),
        (r"^mobilevit\.encoder\.layer\.(\d)\.", lambda m: f"encoder.layer_{int(m[1]) + 1}.1."),
        (r"\.(expand_1x1|conv_3x3|reduce_1x1)\.", mv2_name),
        (r"\.conv_kxk\.", ".local_rep.conv_3x3.block."),
        (r"\.1\.conv_1x1\.", ".1.local_rep.conv_1x1.block."),
        (r"\.transformer\.layer\.(\d)\.layernorm_before\.", r".global_rep.\1.pre_norm_mha.0."),
        (r"\.transformer\.layer\.(\d)\.attention\.output\.dense\.", r".global_rep.\1.pre_norm_mha.1.out_proj."),
        (r"\.transformer\.layer\.(\d)\.layernorm_after\.", r".global_rep.\1.pre_norm_ffn.0."),
        (r"\.transformer\.layer\.(\d)\.intermediate\.dense\.", r".global_rep.\1.pre_norm_ffn.1."),
        (r"\.transformer\.layer\.(\d)\.output\.dense\.", r".global_rep.\1.pre_norm_ffn.4."),
        (r"\.conv_projection\.", ".conv_proj.block."),
        (r"\.fusion\.", ".fusion.block."),
        (
            r"^segmentation_head\.aspp\.convs\.4\.conv_1x1\.",
            "seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.",
        ),
        (r"^segmentation_head\.aspp\.(convs\.\d|project)\.", r"seg_head.aspp.aspp_layer.\1.block."),
        (r"^segmentation_head\.classifier\.", "seg_head.classifier.block."),
        (r"\.convolution\.", ".conv."),
        (r"\.normalization\.", ".norm."),
    ]
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def to_cvnets(hf_state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    depths = MODEL_CONFIGS[SEGMENTATION_MODELS[name]].transformer_depths
    depth_of = {stage: depths[stage - 2] for stage in (2, 3, 4)}
    out, qkv = {}, {}
    for key, value in hf_state.items():
        match = re.match(
            r"^(.*)\.transformer\.layer\.(\d)\.attention\.attention\.(query|key|value)\.(weight|bias)$", key
        )
        if match:  # ml-cvnets fuses q, k and v into one projection
            qkv.setdefault((match[1], match[2], match[4]), {})[match[3]] = value
        else:
            out[hf_to_cvnets_key(key, depth_of)] = value
    for (prefix, layer, kind), parts in qkv.items():
        fused_key = hf_to_cvnets_key(f"{prefix}.transformer.layer.{layer}.layernorm_before.{kind}", depth_of)
        out[fused_key.replace("pre_norm_mha.0", "pre_norm_mha.1.qkv_proj")] = torch.cat(
            [parts["query"], parts["key"], parts["value"]]
        )
    return out


def test_cvnets_segmentation_checkpoint_loads_and_matches(tmp_path):
    """An ``encoder.`` / ``seg_head.`` checkpoint (BGR-trained, like HF's) from a file."""
    name = "deeplabv3_mobilevit_xs"
    ref = hf_segmenter(name, seed=5)
    cvnets_state = to_cvnets(ref.state_dict(), name)
    assert "seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.conv.weight" in cvnets_state
    assert "encoder.layer_5.1.global_rep.3.weight" in cvnets_state
    path = tmp_path / "deeplabv3_mobilevit_xs_cvnets.pt"
    torch.save(cvnets_state, path)
    ours = mobilevit.create_model(name, pretrained=path).eval()
    x = structured_images(2, 192, 256, seed=6)
    with torch.no_grad():
        assert_matches(ours.forward_logits(x), ref(pixel_values=x.flip(1)).logits)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS_M))
def test_parameter_count_within_3_percent_of_paper(name):
    params = sum(p.numel() for p in mobilevit.create_model(name).parameters()) / 1e6
    assert abs(params - PAPER_PARAMS_M[name]) / PAPER_PARAMS_M[name] <= 0.03, f"{name}: {params:.3f} M"


def test_classification_checkpoint_initialises_the_backbone(tmp_path):
    classifier = mobilevit.create_model("mobilevit_xxs")
    path = classifier.save_pretrained(tmp_path / "cls")
    seg = mobilevit.create_model("deeplabv3_mobilevit_xxs", num_classes=3, pretrained=path / "model.safetensors")
    for key, value in classifier.state_dict().items():
        if not key.startswith(("final_conv.", "head.")):
            torch.testing.assert_close(seg.state_dict()[f"backbone.{key}"], value, rtol=0, atol=0)
    assert seg.head.classifier.out_channels == 3


def test_output_stride_and_shapes():
    model = mobilevit.create_model("deeplabv3_mobilevit_xxs", num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 130, 97)).shape == (1, 5, 130, 97)
        assert model.forward_logits(torch.rand(1, 3, 128, 96)).shape == (1, 5, 8, 6)
    with pytest.raises(ValueError, match="output_stride must be one of"):
        mobilevit.create_model("deeplabv3_mobilevit_xxs", output_stride=4)
    with pytest.raises(ValueError, match="expected 3 input channels"):
        model(torch.rand(1, 1, 64, 64))


def test_deeplabv3_on_v3_trains_and_segments():
    model = mobilevit.create_model("deeplabv3_mobilevitv3_xxs", num_classes=5).train()
    x, masks = torch.rand(2, 3, 96, 128), torch.randint(0, 5, (2, 96, 128))
    logits = model(x)
    assert logits.shape == (2, 5, 96, 128)
    loss = F.cross_entropy(logits, masks)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def test_save_and_from_pretrained_round_trip(tmp_path):
    model = randomize_(mobilevit.create_model("deeplabv3_mobilevit_xxs", num_classes=4, output_stride=8))
    model.save_pretrained(tmp_path / "seg")
    loaded = mobilevit.from_pretrained(tmp_path / "seg").eval()
    assert loaded.backbone.output_stride == 8
    x = structured_images(1, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=0, atol=0)


def test_list_models_by_task():
    assert mobilevit.list_models(task="segmentation") == sorted(SEGMENTATION_MODELS)
    assert "mobilevit_s" not in mobilevit.list_models(task="segmentation")


@pytest.mark.parametrize(
    ("name", "size"), [("deeplabv3_mobilevitv2_050", (256, 256)), ("deeplabv3_mobilevitv2_100", (192, 320))]
)
def test_v2_matches_hugging_face(name, size):
    """DeepLabv3 on MobileViTv2 (ASPP 512): HF's port leaves the v2 block's local conv undilated,
    ml-cvnets dilates it; with ``dilate_local_conv=False`` ours equals HF's."""
    config = hf_v2_config(SEGMENTATION_MODELS[name])
    config.num_labels, config.output_stride = 21, 16

    def calibrate(model):
        model(pixel_values=structured_images(4, 128, 128, seed=123))

    ref = randomize_(transformers.MobileViTV2ForSemanticSegmentation(config), 7, calibrate)
    ours = mobilevit.create_model(name, dilate_local_conv=False).eval()
    ours.load_state_dict(mobilevit.convert_state_dict(ref.state_dict()))
    official = mobilevit.create_model(name).eval()
    official.load_state_dict(ours.state_dict())
    x = structured_images(2, *size, seed=8)
    with torch.no_grad():
        expected = ref(pixel_values=x.flip(1)).logits
        # 1e-4 of the logits' scale: v2's random logits reach ~9, and float32 rounding through its
        # GroupNorms and the 512-channel ASPP differs by up to 1.1e-4 between thread counts.
        assert_matches(ours.forward_logits(x), expected, TOL * max(1.0, expected.abs().max().item()))
        # The dilation is real: ml-cvnets' layout gives other logits from the same weights.
        assert (official.forward_logits(x) - expected).abs().max() > 1e-2


def test_final_resize_follows_the_weights_origin(tmp_path):
    """ml-cvnets v0.2+ resizes the logits with align_corners=True: a model built so (as its published
    v2 segmenters are) does the same, and keeps it through save/load."""
    model = mobilevit.create_model("deeplabv3_mobilevitv2_050", align_corners=True).eval()
    x = structured_images(2, 96, 128, seed=5)
    with torch.no_grad():
        logits = model.forward_logits(x)
        assert_matches(model(x), F.interpolate(logits, size=(96, 128), mode="bilinear", align_corners=True))
        plain = F.interpolate(logits, size=(96, 128), mode="bilinear", align_corners=False)
        assert (model(x) - plain).abs().max() > 1e-3
    model.save_pretrained(tmp_path)
    assert mobilevit.from_pretrained(tmp_path).align_corners is True
