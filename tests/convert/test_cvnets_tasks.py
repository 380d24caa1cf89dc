"""ml-cvnets' own DeepLabv3 and SSDLite checkpoint layouts convert onto our models, tensor for tensor.

The layouts (ordered keys and shapes of the official models' ``state_dict()``) are the fixtures that
scripts/cvnets_layouts.py writes from ml-cvnets' sources: v0.1 (MobileViT v1) and main (MobileViTv2)
DeepLabv3 and SSD. Every source tensor gets its own random values, distinct from every other's, and
each converted tensor must equal, by value, its own source: the ml-cvnets tensor at the same place in
the architecture. Both models build their layers in the same order, so that place is the same position
in the two state dicts, which no renaming rule of the converter decides. A key that lands on another
tensor of the same shape (two ASPP branches, a batch norm's weight and bias swapped) is caught by value,
though the swapped state dict still loads strictly.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import mobilevit
from cvnets_fixtures import LAYOUTS, load_layout, random_state
from mobilevit.convert import convert_state_dict

CVNETS_STEM = "encoder.conv_1.block.conv.weight"
AUX_HEAD = "seg_head.aux_head."  # ml-cvnets main's auxiliary segmentation head: dropped by the converter


def convert_quietly(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert_state_dict(state, source)


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    out = {}
    for name in LAYOUTS:
        layout = load_layout(name)
        out[name] = mobilevit.create_model(layout["model"], num_classes=layout["num_classes"]).eval()
    return out


def test_fixtures_cover_both_versions_of_both_tasks():
    assert LAYOUTS == [
        "deeplabv3_mobilevit_xxs_cvnets_v0.1",
        "deeplabv3_mobilevitv2_050_cvnets_main",
        "ssdlite_mobilevit_xxs_cvnets_v0.1",
        "ssdlite_mobilevitv2_050_cvnets_main",
    ]


def distinct_state(layout: dict) -> dict[str, torch.Tensor]:
    """random_state with every tensor distinct from every other: the batch-norm counters, whose random
    draws could meet, are numbered instead. A converted tensor can then equal one source only."""
    state = random_state(layout)
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    for i, key in enumerate(counters):
        state[key] = torch.tensor(i + 1)
    assert len({(tuple(v.shape), v.numpy().tobytes()) for v in state.values()}) == len(state)
    return state


def own_sources(state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, str]:
    """Each key of our model's state dict with its own source: the ml-cvnets key at the same position
    (ml-cvnets' order is the layout's, the auxiliary head left out). Both models register the same
    sublayers in the same order, from the stem to the last head."""
    sources = [k for k in state if not k.startswith(AUX_HEAD)]
    return dict(zip(model.state_dict(), sources, strict=True))


def misplaced(state: dict[str, torch.Tensor], ours: dict[str, torch.Tensor], model: torch.nn.Module) -> list[str]:
    """Our keys whose converted tensor is not its own source's, by value (the stem flipped back to the
    source's BGR order)."""
    wrong = []
    for key, source in own_sources(state, model).items():
        value = ours[key].flip(1) if key.endswith("stem.conv.weight") else ours[key]
        if not torch.equal(value, state[source]):
            wrong.append(key)
    return wrong


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("source", ["auto", "cvnets"])
def test_layout_loads_strictly_and_each_tensor_is_its_own_source(models, name, source):
    layout = load_layout(name)
    model = models[name]
    state = distinct_state(layout)
    ours = convert_quietly(state, source)

    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert (missing, unexpected) == ([], [])
    model.load_state_dict(ours, strict=True)  # shapes too
    assert sum(p.numel() for p in model.parameters()) <= layout["parameters"]
    assert misplaced(state, ours, model) == []
    assert ours[_stem(ours)].flip(1).equal(state[CVNETS_STEM])


# Pairs of our keys with tensors of the same shape, which a wrong renaming rule could swap.
SWAPS = [
    ("deeplabv3_mobilevit_xxs_cvnets_v0.1", "head.aspp.convs.1.conv.weight", "head.aspp.convs.2.conv.weight"),
    ("deeplabv3_mobilevit_xxs_cvnets_v0.1", "head.aspp.convs.1.bn.weight", "head.aspp.convs.1.bn.bias"),
    (
        "deeplabv3_mobilevitv2_050_cvnets_main",
        "backbone.stages.2.1.global_rep.layers.0.attn.qkv_proj.weight",
        "backbone.stages.2.1.global_rep.layers.1.attn.qkv_proj.weight",
    ),
    (
        "ssdlite_mobilevit_xxs_cvnets_v0.1",
        "head.predictors.1.loc_cls.pw_conv.weight",
        "head.predictors.2.loc_cls.pw_conv.weight",
    ),
    (
        "ssdlite_mobilevitv2_050_cvnets_main",
        "head.predictors.0.proj.bn.running_mean",
        "head.predictors.0.proj.bn.running_var",
    ),
]


@pytest.mark.parametrize(("name", "a", "b"), SWAPS)
def test_a_swap_of_two_same_shaped_tensors_is_caught(models, name, a, b):
    """A converter that swapped two tensors of the same shape still gives a state dict that loads
    strictly, and maps each source tensor once; only the values tell the two tensors apart."""
    state = distinct_state(load_layout(name))
    ours = convert_quietly(state, "cvnets")
    assert ours[a].shape == ours[b].shape
    ours[a], ours[b] = ours[b], ours[a]
    models[name].load_state_dict(ours, strict=True)
    assert misplaced(state, ours, models[name]) == [a, b]


def _stem(ours: dict[str, torch.Tensor]) -> str:
    return next(k for k in ours if k.endswith("stem.conv.weight"))


def test_v1_deeplabv3_classifier_lands_in_the_classifier():
    state = random_state(load_layout("deeplabv3_mobilevit_xxs_cvnets_v0.1"))
    ours = convert_state_dict(state, "auto")
    for kind in ("weight", "bias"):
        assert ours[f"head.classifier.{kind}"] is state[f"seg_head.classifier.classifier.block.conv.{kind}"]
    assert (
        ours["head.aspp.convs.4.conv_1x1.bn.running_var"]
        is state["seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block.norm.running_var"]
    )


def test_v2_deeplabv3_aux_head_is_dropped_with_a_warning():
    state = random_state(load_layout("deeplabv3_mobilevitv2_050_cvnets_main"))
    with pytest.warns(UserWarning, match=r"dropped 8 tensors of ml-cvnets' auxiliary segmentation head"):
        ours = convert_state_dict(state, "cvnets")
    assert not any("aux" in k for k in ours)
    assert ours["head.classifier.weight"] is state["seg_head.classifier.block.conv.weight"]


def _cvnets_conv_layer(state: dict[str, torch.Tensor], prefix: str, x: torch.Tensor, act: bool) -> torch.Tensor:
    """ml-cvnets' ConvLayer in eval mode from its own tensors: conv [+ norm] [+ ReLU] (padding k // 2)."""
    weight = state[f"{prefix}.block.conv.weight"]
    groups = x.shape[1] // weight.shape[1]
    x = F.conv2d(x, weight, state.get(f"{prefix}.block.conv.bias"), padding=weight.shape[-1] // 2, groups=groups)
    if f"{prefix}.block.norm.weight" in state:
        norm = {k: state[f"{prefix}.block.norm.{k}"] for k in ("running_mean", "running_var", "weight", "bias")}
        x = F.batch_norm(x, **norm, training=False, eps=1e-5)
    return F.relu(x) if act else x


def _cvnets_ssd_head(state: dict[str, torch.Tensor], i: int, x: torch.Tensor, num_classes: int):
    """ml-cvnets' SSDHead.forward (cvnets/modules/ssd.py, ssd_heads.py) from the checkpoint's tensors."""
    prefix = f"ssd_heads.{i}"
    if f"{prefix}.proj_layer.block.conv.weight" in state:
        x = _cvnets_conv_layer(state, f"{prefix}.proj_layer", x, act=True)
    if f"{prefix}.loc_cls_layer.dw_conv.block.conv.weight" in state:
        x = _cvnets_conv_layer(state, f"{prefix}.loc_cls_layer.dw_conv", x, act=False)
        x = _cvnets_conv_layer(state, f"{prefix}.loc_cls_layer.pw_conv", x, act=False)
    else:
        x = _cvnets_conv_layer(state, f"{prefix}.loc_cls_layer", x, act=False)
    x = x.permute(0, 2, 3, 1).contiguous().view(x.shape[0], -1, 4 + num_classes)
    return torch.split(x, [4, num_classes], dim=-1)


def _head_in_channels(state: dict[str, torch.Tensor], i: int) -> int:
    """Input width of ml-cvnets' ssd_heads.{i}: its projection's, else its depthwise or 1x1 conv's."""
    prefix = f"ssd_heads.{i}"
    if f"{prefix}.proj_layer.block.conv.weight" in state:
        return state[f"{prefix}.proj_layer.block.conv.weight"].shape[1]
    if f"{prefix}.loc_cls_layer.dw_conv.block.conv.weight" in state:
        return state[f"{prefix}.loc_cls_layer.dw_conv.block.conv.weight"].shape[0]
    return state[f"{prefix}.loc_cls_layer.block.conv.weight"].shape[1]


@pytest.mark.parametrize("name", ["ssdlite_mobilevit_xxs_cvnets_v0.1", "ssdlite_mobilevitv2_050_cvnets_main"])
def test_ssd_predictors_split_boxes_and_classes_like_cvnets(models, name):
    """Each converted predictor gives ml-cvnets' (boxes, logits) split: 4 box offsets, then the classes."""
    layout = load_layout(name)
    state = random_state(layout, seed=1)
    model = models[name]
    model.load_state_dict(convert_quietly(state, "auto"))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for i, predictor in enumerate(model.head.predictors):
            channels = _head_in_channels(state, i)
            side = 1 if i == len(model.head.predictors) - 1 else 3
            x = torch.randn(2, channels, side, side, generator=gen)
            boxes, logits = predictor(x)
            ref_boxes, ref_logits = _cvnets_ssd_head(state, i, x, layout["num_classes"])
            assert (boxes - ref_boxes).abs().max().item() < 1e-5
            assert (logits - ref_logits).abs().max().item() < 1e-5
