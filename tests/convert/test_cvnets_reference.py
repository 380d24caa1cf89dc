"""Our converted models equal Apple ml-cvnets' own DeepLabv3 and SSDLite: MobileViT v1 (cvnets-v0.1)
and MobileViTv2-0.5 (ml-cvnets main).

The fixtures in tests/fixtures/cvnets/reference are outputs of the official models (built with
ml-cvnets' classes by scripts/cvnets_reference.py, random weights ``reference_state(layout, seed)``
of that script, eval mode). Here the same random state is regenerated from the layout, converted with
``convert_state_dict(state, "cvnets")`` and loaded strictly into our model. Each fixture's outputs for
its two images differ by more than 100 times the tolerance they are checked with, the suite's rule
for a reference (MobileViT v1's weights are drawn with the script's ``bn_gain`` for that).

The official v1 model was fed BGR images ``x.flip(1)``: ml-cvnets' v1 weights were trained on BGR,
and the converter flips the stem for the cvnets source by default, so ours(x) == official(x.flip(1)).

ml-cvnets main trains on RGB (PIL images), so the official v2 models were fed ``x`` and the state is
converted with ``bgr=False``: ours(x) == official(x). The v2 segmenter's auxiliary head is dropped by
the converter with a warning; its final resize has aligned corners (``UpSample(..., align_corners=True)``,
called with ``orig_size`` = the input size, as ml-cvnets' evaluation does), which our DeepLabv3 takes as
the ``align_corners=True`` option.

Output stride 8 (ml-cvnets main): the ADE20K DeepLabv3 on MobileViTv2-0.5 (150 classes, ASPP rates
12/24/36) and ml-cvnets v2's retrain of DeepLabv3 on MobileViT v1 (XXS here; ASPP 512 at 12/24/36),
both with the aux head and aligned corners. Their layouts are in the reference JSONs (``state_dict``),
not in tests/fixtures/cvnets, and the model's options in ``model_kwargs``. ml-cvnets main's LayerNorm
normalizes MobileViT v1's [B*P, N, C] patches over N where N == C (a channel-first branch); ours does
not, so at such a size (128x160 for XXS at output stride 8) we equal ml-cvnets with nn.LayerNorm's
forward in its LayerNorms instead (``logits_plain_layer_norm``).
"""

from __future__ import annotations

import functools
import json
import warnings

import pytest
import torch
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_convert

import mobilevit
from cvnets_fixtures import FIXTURES, load_layout
from mobilevit.convert import convert_state_dict
from mobilevit.testing import structured_images
from script_loader import load_script

REFERENCE = FIXTURES / "reference"
SCRIPT = FIXTURES.parents[2] / "scripts" / "cvnets_reference.py"
ATOL = 1e-4
MODELS = ["deeplabv3_mobilevit_xxs_cvnets_v0.1", "ssdlite_mobilevit_xxs_cvnets_v0.1"]
MODELS_MAIN = ["deeplabv3_mobilevitv2_050_cvnets_main", "ssdlite_mobilevitv2_050_cvnets_main"]
MODELS_OS8 = ["deeplabv3_mobilevitv2_050_ade20k_cvnets_main", "deeplabv3_mobilevit_xxs_cvnets_main"]


def reference_script():
    return load_script(SCRIPT, "cvnets_reference")


def load_reference(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((REFERENCE / f"{name}.json").read_text())
    tensors = torch.load(REFERENCE / f"{name}.pt", weights_only=True)
    return meta, tensors


def subsample(x: torch.Tensor, dims: tuple[int, ...], start: int, step: int) -> torch.Tensor:
    index = [slice(None)] * x.dim()
    for d in dims:
        index[d] = slice(start, None, step)
    return x[tuple(index)]


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def reference_state(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The reference outputs and the random ml-cvnets state dict the official model had."""
    meta, tensors = load_reference(name)
    layout = meta if meta["layout"] is None else load_layout(meta["layout"])  # None: embedded in the JSON
    gain = meta.get("state_bn_gain", 1.0)
    return meta, tensors, reference_script().reference_state(layout, seed=meta["state_seed"], bn_gain=gain)


@functools.cache
def converted(name: str, **model_kwargs) -> tuple[dict, dict[str, torch.Tensor], torch.nn.Module]:
    """The reference outputs and our model with the same random weights, converted from ml-cvnets' keys
    (v0.1: the default BGR flip of the stem; main: ``bgr=False``, its weights take RGB)."""
    meta, tensors, state = reference_state(name)
    bgr = None if name.endswith("_v0.1") else False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the aux head's warning: test_converter_drops_the_aux_head
        ours = convert_state_dict(state, "cvnets", bgr=bgr)
    model = mobilevit.create_model(meta["model"], num_classes=meta["num_classes"], **model_kwargs)
    model.load_state_dict(ours, strict=True)
    return meta, tensors, model.eval()


def test_reference_fixtures_are_small():
    files = sorted(REFERENCE.iterdir())
    names = sorted(f"{m}{ext}" for m in MODELS + MODELS_MAIN + MODELS_OS8 for ext in (".json", ".pt"))
    assert [p.name for p in files] == names
    assert all(p.stat().st_size < 600_000 for p in files)


def tolerance(meta: dict, ref: dict[str, torch.Tensor], key: str) -> float | None:
    """The tolerance the tests here compare the stored output ``key`` with: ATOL for each value, ATOL
    times the number of values summed for a sum; None for the anchors, which do not depend on the image
    (checked to 1e-5 as geometry)."""
    size, kind = key.split(".", 1)
    if kind == "anchors":
        return None
    per_value = ("logits", "logits_sub", "logits_plain_layer_norm", "resized_sub", "locations", "confidences_sub")
    if kind in per_value:
        return ATOL
    summed = {
        "resized_sum": meta["inputs"][size]["height"] * meta["inputs"][size]["width"],
        "logits_class_sum": meta["num_classes"],
        "confidences_anchor_sum": meta["num_classes"],
        "confidences_class_sum": len(ref.get(f"{size}.anchors", ())),
    }
    return ATOL * summed[kind]  # a KeyError for an output this test does not know


@pytest.mark.parametrize("name", MODELS + MODELS_MAIN + MODELS_OS8)
def test_references_depend_on_the_input(name):
    """The suite's rule for a reference (mobilevit.testing.assert_matches): each stored output of the
    batch's two images differs between them by more than 100 times the tolerance it is checked with.
    A reference that hardly depends on the input (activations collapsed by its random weights) would
    match a model that ignores the image, or takes the channels in the wrong order."""
    meta, ref = load_reference(name)
    checked = 0
    for key, value in ref.items():
        tol = tolerance(meta, ref, key)
        if tol is None:
            continue
        assert value.shape[0] == 2, key
        spread = max_err(value[0], value[1])
        assert spread > 100 * tol, f"{key}: the two images' outputs differ by {spread:.2e}, not > 100 x {tol:.0e}"
        checked += 1
    assert checked >= len(meta["inputs"]) * 3


@torch.no_grad()
def test_deeplabv3_equals_cvnets():
    meta, ref, model = converted(MODELS[0])
    start, step = meta["subsample"]
    for size, spec in meta["inputs"].items():
        assert spec["official_input"] == "x.flip(1)"
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
        logits = model.forward_logits(x)
        assert max_err(logits, ref[f"{size}.logits"]) < ATOL
        # v0.1's head upsamples by the output stride (align_corners=False); our forward resizes to the
        # input size, also without aligned corners: the same grid when the sides are multiples of 16.
        assert model.align_corners is False
        resized = model(x)
        assert max_err(subsample(resized, (2, 3), start, step), ref[f"{size}.resized_sub"]) < ATOL
        assert max_err(resized.sum(dim=(2, 3)), ref[f"{size}.resized_sum"]) < ATOL * resized[0, 0].numel()


@pytest.mark.parametrize(
    ("name", "official_input"),
    [(MODELS[1], "x.flip(1)"), (MODELS_MAIN[1], "x")],
    ids=["v0.1-bgr", "main-rgb"],
)
@torch.no_grad()
def test_ssdlite_equals_cvnets(name, official_input):
    meta, ref, model = converted(name)
    start, step = meta["subsample"]
    for size, spec in meta["inputs"].items():
        h, w = spec["height"], spec["width"]
        assert spec["official_input"] == official_input
        x = structured_images(2, h, w, seed=spec["seed"])
        features = list(model.backbone(x).values())
        head = model.head(features)
        boxes, logits = head["bbox_regression"], head["cls_logits"]
        assert max_err(boxes, ref[f"{size}.locations"]) < ATOL
        assert max_err(subsample(logits, (1,), start, step), ref[f"{size}.confidences_sub"]) < ATOL
        assert max_err(logits.sum(-1), ref[f"{size}.confidences_anchor_sum"]) < ATOL * logits.shape[-1]
        assert max_err(logits.sum(1), ref[f"{size}.confidences_class_sum"]) < ATOL * logits.shape[1]

        # torchvision's DefaultBoxGenerator gives (x1, y1, x2, y2) in pixels; ml-cvnets' anchors are
        # (cx, cy, w, h) over the image side, clipped to [0, 1], in the same (map, y, x, anchor) order.
        anchors = model.anchor_generator(ImageList(x, [(h, w)] * 2), features)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        for per_image in anchors:
            ctr = box_convert(per_image, "xyxy", "cxcywh") / scale
            assert max_err(ctr, ref[f"{size}.anchors"]) < 1e-5


@torch.no_grad()
def test_references_tell_the_channel_order_apart():
    """Fed RGB (no flip), the official v1 models give outputs more than ATOL away from ours: the
    fixtures do check the BGR flip of the converter, not only the head's biases."""
    meta, ref, model = converted(MODELS[0])
    for size, spec in meta["inputs"].items():
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
        assert max_err(model.forward_logits(x.flip(1)), ref[f"{size}.logits"]) > 5 * ATOL
    meta, ref, model = converted(MODELS[1])
    for size, spec in meta["inputs"].items():
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
        boxes = model.head(list(model.backbone(x.flip(1)).values()))["bbox_regression"]
        assert max_err(boxes, ref[f"{size}.locations"]) > 5 * ATOL


@pytest.mark.parametrize("name", [MODELS_MAIN[0], *MODELS_OS8])
def test_converter_drops_the_aux_head(name):
    """ml-cvnets main's segmenters have an auxiliary head (use_aux_head): the converter drops its 8
    tensors with a warning, and everything else loads strictly."""
    meta, _, state = reference_state(name)
    aux = [k for k in state if k.startswith("seg_head.aux_head.")]
    assert len(aux) == 8
    assert state["seg_head.aux_head.2.block.conv.weight"].shape[0] == meta["num_classes"]
    with pytest.warns(UserWarning, match="auxiliary segmentation head"):
        ours = convert_state_dict(state, "cvnets", bgr=False)
    assert not any("aux" in k for k in ours)
    kwargs = meta.get("model_kwargs", {"align_corners": True})
    model = mobilevit.create_model(meta["model"], num_classes=meta["num_classes"], **kwargs)
    model.load_state_dict(ours, strict=True)


@torch.no_grad()
def test_deeplabv3_v2_equals_cvnets_main():
    meta, ref, model = converted(MODELS_MAIN[0], align_corners=True)
    start, step = meta["subsample"]
    assert model.align_corners is True
    for size, spec in meta["inputs"].items():
        assert spec["official_input"] == "x"
        assert spec["official_call"] == "model(x, orig_size=(height, width))"
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
        logits = model.forward_logits(x)
        assert list(logits.shape) == spec["logits_shape"]
        assert max_err(logits, ref[f"{size}.logits"]) < ATOL
        # ml-cvnets resizes the logits to orig_size with aligned corners; so does our forward.
        resized = model(x)
        assert resized.shape[-2:] == (spec["height"], spec["width"])
        assert max_err(subsample(resized, (2, 3), start, step), ref[f"{size}.resized_sub"]) < ATOL
        assert max_err(resized.sum(dim=(2, 3)), ref[f"{size}.resized_sum"]) < ATOL * resized[0, 0].numel()


@torch.no_grad()
def test_v2_references_tell_the_options_apart():
    """The v2 fixtures check the channel order (fed BGR, ours is more than ATOL away) and the aligned
    corners of the final resize (with align_corners=False, more than ATOL away)."""
    meta, ref, model = converted(MODELS_MAIN[0], align_corners=True)
    _, _, unaligned = converted(MODELS_MAIN[0], align_corners=False)
    start, step = meta["subsample"]
    for size, spec in meta["inputs"].items():
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
        assert max_err(model.forward_logits(x.flip(1)), ref[f"{size}.logits"]) > 5 * ATOL
        resized = subsample(unaligned(x), (2, 3), start, step)
        assert max_err(resized, ref[f"{size}.resized_sub"]) > 5 * ATOL
    meta, ref, model = converted(MODELS_MAIN[1])
    for size, spec in meta["inputs"].items():
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
        boxes = model.head(list(model.backbone(x.flip(1)).values()))["bbox_regression"]
        assert max_err(boxes, ref[f"{size}.locations"]) > 5 * ATOL


def converted_os8(name: str, **overrides):
    meta, _ = load_reference(name)
    kwargs = {**meta["model_kwargs"], **overrides}
    kwargs["aspp_rates"] = tuple(kwargs["aspp_rates"])
    return converted(name, **kwargs)


def test_os8_options_are_the_published_ones():
    """The fixtures' model options are those of the published ml-cvnets main checkpoints (their tags
    deeplabv3_mobilevitv2_050.cvnets_ade20k and deeplabv3_mobilevit_s.cvnets_v2_voc)."""
    ade20k, _ = load_reference(MODELS_OS8[0])
    assert ade20k["model_kwargs"] == {"output_stride": 8, "aspp_rates": [12, 24, 36], "align_corners": True}
    assert ade20k["num_classes"] == 150
    v1, _ = load_reference(MODELS_OS8[1])
    assert v1["model_kwargs"] == {
        "output_stride": 8,
        "aspp_channels": 512,
        "aspp_rates": [12, 24, 36],
        "align_corners": True,
    }
    for meta in (ade20k, v1):
        options = meta["options"]
        assert options["model.segmentation.output_stride"] == 8
        assert options["model.segmentation.deeplabv3.aspp_out_channels"] == 512
        assert options["model.segmentation.deeplabv3.aspp_rates"] == [12, 24, 36]
        assert options["model.segmentation.use_aux_head"] is True
    _, _, model = converted_os8(MODELS_OS8[0])
    assert model.head.aspp.project[0].out_channels == 512  # the v2 default


def _check_os8(meta, ref, model, size, spec) -> None:
    start, step = meta["subsample"]
    x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
    logits = model.forward_logits(x)
    assert list(logits.shape) == spec["logits_shape"]
    resized = model(x)
    assert resized.shape[-2:] == (spec["height"], spec["width"])
    if meta.get("class_subsample"):
        assert max_err(subsample(logits, (1,), start, step), ref[f"{size}.logits_sub"]) < ATOL
        assert max_err(logits.sum(1), ref[f"{size}.logits_class_sum"]) < ATOL * logits.shape[1]
        assert max_err(subsample(resized, (1, 2, 3), start, step), ref[f"{size}.resized_sub"]) < ATOL
    else:
        assert max_err(logits, ref[f"{size}.logits"]) < ATOL
        assert max_err(subsample(resized, (2, 3), start, step), ref[f"{size}.resized_sub"]) < ATOL
    assert max_err(resized.sum(dim=(2, 3)), ref[f"{size}.resized_sum"]) < ATOL * resized[0, 0].numel()


@torch.no_grad()
def test_deeplabv3_v2_ade20k_equals_cvnets_main():
    meta, ref, model = converted_os8(MODELS_OS8[0])
    assert model.align_corners is True
    assert list(meta["inputs"]) == ["192x224", "136x168"]
    # 136x168: 17x21 maps at stride 8, which MobileViTBlockv2 resizes to 18x22 (and keeps)
    assert meta["inputs"]["136x168"]["logits_shape"] == [2, 150, 18, 22]
    for size, spec in meta["inputs"].items():
        assert spec["official_input"] == "x"
        assert spec["official_call"] == "model(x, orig_size=(height, width))"
        _check_os8(meta, ref, model, size, spec)


@torch.no_grad()
def test_deeplabv3_v1_equals_cvnets_main():
    """ml-cvnets v2's DeepLabv3 on MobileViT v1 (main's code), where no LayerNorm takes its
    channel-first branch; 136x168 has 17x21 maps at stride 8 (MobileViTBlock resizes them to 18x22
    and back)."""
    meta, ref, model = converted_os8(MODELS_OS8[1])
    quirk = meta["layer_norm_quirk"]["inputs"]
    sizes = [s for s in meta["inputs"] if s not in quirk]
    assert sizes == ["192x224", "136x168"]
    assert meta["inputs"]["136x168"]["logits_shape"] == [2, 21, 17, 21]
    for size in sizes:
        spec = meta["inputs"][size]
        assert spec["official_input"] == "x"
        _check_os8(meta, ref, model, size, spec)


@torch.no_grad()
def test_deeplabv3_v1_cvnets_main_layer_norm_quirk():
    """At 128x160 (N = 80 patches in layer4, whose transformer dim is 80) ml-cvnets main's LayerNorm
    normalizes over the patches: ours is more than ATOL away from it, and equals ml-cvnets with
    nn.LayerNorm's forward in every LayerNorm (the plain LayerNorm of v0.1, which ours implements)."""
    meta, ref, model = converted_os8(MODELS_OS8[1])
    quirk = meta["layer_norm_quirk"]
    assert quirk["inputs"] == ["128x160"]
    assert quirk["channel_first_layer_norms"][-1] == "encoder.layer_4.1.global_rep.4"
    assert all(n.startswith("encoder.layer_4.1.global_rep.") for n in quirk["channel_first_layer_norms"])
    for size in quirk["inputs"]:
        spec = meta["inputs"][size]
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])
        logits = model.forward_logits(x)
        assert max_err(logits, ref[f"{size}.logits_plain_layer_norm"]) < ATOL
        assert max_err(logits, ref[f"{size}.logits"]) > 5 * ATOL


@torch.no_grad()
@pytest.mark.parametrize("name", MODELS_OS8)
def test_os8_references_tell_the_options_apart(name):
    """The output-stride-8 fixtures check the channel order (fed BGR, ours is more than ATOL away),
    the aligned corners of the final resize and the ASPP rates."""
    meta, ref, model = converted_os8(name)
    _, _, unaligned = converted_os8(name, align_corners=False)
    _, _, rates = converted_os8(name, aspp_rates=(6, 12, 18))
    start, step = meta["subsample"]
    dims = (1, 2, 3) if meta.get("class_subsample") else (2, 3)
    key = "logits_sub" if meta.get("class_subsample") else "logits"
    for size in ("192x224", "136x168"):
        spec = meta["inputs"][size]
        x = structured_images(2, spec["height"], spec["width"], seed=spec["seed"])

        def logits(m, image):
            out = m.forward_logits(image)
            return subsample(out, (1,), start, step) if meta.get("class_subsample") else out

        assert max_err(logits(model, x.flip(1)), ref[f"{size}.{key}"]) > 5 * ATOL
        assert max_err(logits(rates, x), ref[f"{size}.{key}"]) > 5 * ATOL
        assert max_err(subsample(unaligned(x), dims, start, step), ref[f"{size}.resized_sub"]) > 5 * ATOL
