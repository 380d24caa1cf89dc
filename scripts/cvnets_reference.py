"""Write reference outputs of Apple ml-cvnets' own DeepLabv3 and SSDLite MobileViT models as test fixtures.

The models are built with ml-cvnets' classes, from the options of its YAML configs, given random
weights and run in eval mode on CPU; tests/convert/test_cvnets_reference.py then checks that our
converted models give the same outputs. Only small tensors are written (the random weights are not:
they are regenerated from the layout fixtures with :func:`reference_state`, which the test imports).

Needs a checkout of ml-cvnets at tag cvnets-v0.1 (MobileViT v1; not pip-installable, the PyPI
``cvnets`` is an unrelated project)::

    git clone https://github.com/apple/ml-cvnets /tmp/ml-cvnets-v01
    git -C /tmp/ml-cvnets-v01 checkout cvnets-v0.1      # d38a116fe134
    python scripts/cvnets_reference.py --cvnets-v01 /tmp/ml-cvnets-v01

Only what builds and runs the models is imported (cvnets.models.{segmentation,detection} and their
layers/modules; torch, numpy and, for the SSD module, torchvision). The fixtures in the repository
were made from a subset of that checkout (the forward code of every layer verbatim; option parsing,
profiling and registries of other models left out).

Options (argparse namespace with ml-cvnets' dotted names, as its YAML loader sets them):

- DeepLabv3: config/segmentation/deeplabv3_mobilevit_xx_small.yaml (output stride 16, ASPP 256
  channels at rates 6/12/18, swish in the encoder, ReLU in the head, 21 VOC classes);
- SSD: config/detection/ssd_mobilevit_xx_small_320.yaml (output strides 16..256 and global,
  proj_channels 512/256/256/128/128/64, aspect ratios {2, 3} and {2} on the global map, 81 classes).

ml-cvnets' MobileViT v1 weights take BGR images, so the official model is fed ``x.flip(1)`` where
``x`` is the RGB image of ``mobilevit.testing.structured_images``: our converter flips the stem for
the cvnets source by default, so ours(x) must equal official(x.flip(1)).

The v0.1 models' weights are drawn with ``bn_gain`` 1.25 (see reference_state), as is the MobileViT v1 model of
ml-cvnets main below: with gain 1 the outputs hardly depended on the image (the DeepLabv3's logits of
two images differed by 1.5e-3, against the test's tolerance of 1e-4); with 1.25 they differ by 0.28 to
1.8, and ours still equal ml-cvnets' within 3e-6.

MobileViTv2 (``--cvnets-main DIR``: ml-cvnets main, 0c0f79822f0a, the newest stored commit of every file
used; a subset like the v0.1 one, with main's ConvLayer2d, LinearSelfAttention, LinearAttnFFN,
MobileViTBlockv2, InvertedResidual, ASPP, BaseSegHead/DeeplabV3, SegEncoderDecoder, SSD, SSDHead and
SSDAnchorGenerator verbatim; registry, weight init, logger, matcher stubbed):

- DeepLabv3: config/segmentation/pascal_voc/deeplabv3_mobilevitv2.yaml with width multiplier 0.5
  (the YAML's is 1.0; the published 0.5 segmenter was trained with this config at 0.5): output stride
  16, ASPP 512 channels at rates 6/12/18, swish in the encoder, ReLU in the head, 21 classes, the
  auxiliary head (use_aux_head; only run in training, and dropped by our converter);
- SSD: config/detection/ssd_coco/mobilevit_v2.yaml with width multiplier 0.5 (the YAML's is 2.0), 81
  classes (COCO + background, set by ml-cvnets' dataset), ReLU in the SSD layers.

ml-cvnets main trains on RGB (PIL) images, so the official v2 models are fed ``x`` itself, and the
test converts with ``bgr=False``. BaseSegHead's final resize is ``UpSample(scale_factor=16,
mode="bilinear", align_corners=True)``; given ``orig_size`` (as ml-cvnets' segmentation evaluation
passes the image size) it resizes to that size instead. The reference stores
``model(x, orig_size=(H, W))``, and checks that the plain ``model(x)`` equals it where H and W are
multiples of 16. The third segmentation input (136x168) has odd feature maps at strides 8 and 16,
so MobileViTBlockv2 resizes its input (align_corners=True) to even sides, and the logits are 10x12,
not (136/16)x(168/16).

Output stride 8 (``--cvnets-main``; their layouts go into the reference JSON as ``state_dict``, with
``layout: null``, since tests/fixtures/cvnets holds one layout per published checkpoint kind):

- DeepLabv3 ADE20K: config/segmentation/ade20k/deeplabv3_mobilevitv2.yaml at width 0.5 (the published
  deeplabv3_mobilevitv2_050.cvnets_ade20k): 150 classes, output stride 8, ASPP 512 at rates 12/24/36,
  aux head. The stored logits are every 8th class from the 3rd plus the sum over all classes (size).
- DeepLabv3 on MobileViT v1, ml-cvnets v2's retrain: config/segmentation/pascal_voc/deeplabv3_mobilevit.yaml
  with mit.mode xx_small (the YAML's, and the published deeplabv3-mobilevitv1.pt's, is small): 21
  classes, output stride 8, ASPP 512 at rates 12/24/36, aux head, RGB. Needs main's MobileViT v1
  (classification/mobilevit.py and config/mobilevit.py, MobileViTBlock, TransformerEncoder,
  MultiHeadAttention, SingleHeadAttention, StochasticDepth, main's LinearLayer) besides the v2 subset.
  Its weights are drawn with ``bn_gain`` 1.25 (see reference_state), and at 128x160 it meets a
  behaviour of main's LayerNorm (see deeplabv3_v1_main).

Inputs at output stride 8: 192x224 and 136x168 (17x21 maps at stride 8: MobileViTBlockv2 resizes them to
18x22 and keeps that size, so the ADE20K logits are 18x22; MobileViTBlock resizes back to 17x21).

Usage: ``python scripts/cvnets_reference.py [--cvnets-v01 DIR] [--cvnets-main DIR] [--out DIR]
[--only WRITER ...]`` (at least one checkout; default out: tests/fixtures/cvnets/reference; writers:
deeplabv3_v01, ssd_v01, deeplabv3_main, ssd_main, deeplabv3_ade20k_main, deeplabv3_v1_main).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cvnets_fixtures import load_layout  # noqa: E402
from mobilevit.testing import structured_images  # noqa: E402

STATE_SEED = 2024  # reference_state(layout, seed=STATE_SEED)
SEG_INPUTS = {"256x256": (256, 256, 11), "192x224": (192, 224, 12)}  # name: (H, W, image seed)
DET_INPUTS = {"320x320": (320, 320, 13)}
SEG_INPUTS_MAIN = {**SEG_INPUTS, "136x168": (136, 168, 14)}  # the last: odd maps at strides 8 and 16
SUBSAMPLE = (3, 8)  # resized logits / class logits: every 8th pixel (anchor) from the 3rd
# output stride 8 (ml-cvnets main): side multiples of 8; the last has odd maps at stride 8 (17x21)
SEG_INPUTS_OS8 = {"192x224": (192, 224, 15), "136x168": (136, 168, 16)}
# ml-cvnets main's LayerNorm takes a [B*P, N, C] patch tensor with N == C for channel-first (see
# deeplabv3_v1_main): at 128x160 the stride-8 maps are 16x20, N = 8 * 10 = 80 = MobileViT-XXS layer4's dim
SEG_INPUT_LN_QUIRK = {"128x160": (128, 160, 17)}
V1_BN_GAIN = 1.25  # reference_state(..., bn_gain) of every MobileViT v1 model (see there)

COMMON_V01 = {
    "model.classification.name": "mobilevit",
    "model.classification.classifier_dropout": 0.1,
    "model.classification.mit.mode": "xx_small",
    "model.classification.mit.ffn_dropout": 0.0,
    "model.classification.mit.attn_dropout": 0.0,
    "model.classification.mit.dropout": 0.05,
    "model.classification.mit.number_heads": 4,
    "model.classification.mit.no_fuse_local_global_features": False,
    "model.classification.mit.conv_kernel_size": 3,
    "model.classification.activation.name": "swish",
    "model.normalization.name": "sync_batch_norm",
    "model.normalization.momentum": 0.1,
    "model.activation.name": "relu",
    "model.activation.inplace": False,
    "model.layer.global_pool": "mean",
    "model.layer.conv_init": "kaiming_normal",
    "model.layer.linear_init": "normal",
}
SEG_V01 = {
    **COMMON_V01,
    "model.segmentation.name": "encoder_decoder",
    "model.segmentation.n_classes": 21,
    "model.segmentation.lr_multiplier": 10,
    "model.segmentation.seg_head": "deeplabv3",
    "model.segmentation.output_stride": 16,
    "model.segmentation.classifier_dropout": 0.1,
    "model.segmentation.activation.name": "relu",
    "model.segmentation.deeplabv3.aspp_dropout": 0.1,
    "model.segmentation.deeplabv3.aspp_sep_conv": False,
    "model.segmentation.deeplabv3.aspp_out_channels": 256,
    "model.segmentation.deeplabv3.aspp_rates": [6, 12, 18],
}
DET_V01 = {
    **COMMON_V01,
    "model.detection.name": "ssd",
    "model.detection.n_classes": 81,  # set by ml-cvnets' COCO dataset (80 + background)
    "model.detection.ssd.anchors_aspect_ratio": [[2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2]],
    "model.detection.ssd.output_strides": [16, 32, 64, 128, 256, -1],
    "model.detection.ssd.proj_channels": [512, 256, 256, 128, 128, 64],
    "model.detection.ssd.center_variance": 0.1,
    "model.detection.ssd.size_variance": 0.2,
    "model.detection.ssd.iou_threshold": 0.5,
    "model.detection.ssd.nms_iou_threshold": 0.5,
}


# ml-cvnets main: the argparse defaults that its code reads with getattr(opts, name) (no default there)
DEFAULTS_MAIN = {
    "model.normalization.groups": 1,
    "model.activation.neg_slope": 0.1,
    "model.classification.n_classes": 1000,
    "model.classification.freeze_batch_norm": False,
    "model.classification.enable_layer_wise_lr_decay": False,
    "model.classification.layer_wise_lr_decay_rate": 1.0,
    "model.classification.activation.inplace": False,
    "model.classification.mitv2.attn_dropout": 0.0,
    "model.classification.mitv2.ffn_dropout": 0.0,
    "model.classification.mitv2.dropout": 0.0,
}
COMMON_MAIN = {
    **DEFAULTS_MAIN,
    "model.classification.name": "mobilevit_v2",
    "model.classification.mitv2.width_multiplier": 0.5,
    "model.classification.mitv2.attn_norm_layer": "layer_norm_2d",
    "model.classification.activation.name": "swish",
    "model.normalization.name": "sync_batch_norm",
    "model.normalization.momentum": 0.1,
    "model.activation.inplace": False,
    "model.layer.global_pool": "mean",
    "model.layer.linear_init": "normal",
}
SEG_MAIN = {
    **COMMON_MAIN,
    "model.activation.name": "swish",
    "model.layer.conv_init": "kaiming_uniform",
    "model.segmentation.name": "encoder_decoder",
    "model.segmentation.n_classes": 21,
    "model.segmentation.lr_multiplier": 1,
    "model.segmentation.seg_head": "deeplabv3",
    "model.segmentation.output_stride": 16,
    "model.segmentation.use_aux_head": True,
    "model.segmentation.aux_dropout": 0.1,
    "model.segmentation.classifier_dropout": 0.1,
    "model.segmentation.activation.name": "relu",
    "model.segmentation.activation.inplace": False,
    "model.segmentation.activation.neg_slope": 0.1,
    "model.segmentation.use_level5_exp": False,
    "model.segmentation.norm_layer": "batch_norm",
    "model.segmentation.freeze_batch_norm": False,
    "model.segmentation.deeplabv3.aspp_dropout": 0.1,
    "model.segmentation.deeplabv3.aspp_sep_conv": False,
    "model.segmentation.deeplabv3.aspp_out_channels": 512,
    "model.segmentation.deeplabv3.aspp_rates": [6, 12, 18],
}
# config/segmentation/ade20k/deeplabv3_mobilevitv2.yaml: 150 classes, output stride 8, ASPP 512 channels at
# rates 12/24/36, aux head; no classifier_dropout/aspp_sep_conv there (argparse defaults 0.1/False)
SEG_ADE20K_MAIN = {
    **SEG_MAIN,
    "model.segmentation.n_classes": 150,
    "model.segmentation.output_stride": 8,
    "model.segmentation.deeplabv3.aspp_rates": [12, 24, 36],
}
# config/segmentation/pascal_voc/deeplabv3_mobilevit.yaml (ml-cvnets v2's retrain of DeepLabv3 on MobileViT
# v1, published as deeplabv3-mobilevitv1.pt with mit.mode small): mode xx_small here (smallest fixture)
SEG_V1_MAIN = {
    **DEFAULTS_MAIN,
    "model.classification.name": "mobilevit",
    "model.classification.classifier_dropout": 0.1,
    "model.classification.mit.mode": "xx_small",
    "model.classification.mit.ffn_dropout": 0.0,
    "model.classification.mit.attn_dropout": 0.0,
    "model.classification.mit.dropout": 0.1,
    "model.classification.mit.number_heads": 4,
    "model.classification.mit.head_dim": None,
    "model.classification.mit.no_fuse_local_global_features": False,
    "model.classification.mit.conv_kernel_size": 3,
    "model.classification.activation.name": "swish",
    "model.normalization.name": "sync_batch_norm",
    "model.normalization.momentum": 0.1,
    "model.activation.name": "relu",
    "model.activation.inplace": False,
    "model.layer.global_pool": "mean",
    "model.layer.conv_init": "kaiming_normal",
    "model.layer.linear_init": "normal",
    **{k: v for k, v in SEG_MAIN.items() if k.startswith("model.segmentation.")},
    "model.segmentation.lr_multiplier": 10,
    "model.segmentation.output_stride": 8,
    "model.segmentation.deeplabv3.aspp_rates": [12, 24, 36],
}
DET_MAIN = {
    **COMMON_MAIN,
    "model.activation.name": "relu",
    "model.layer.conv_init": "kaiming_normal",
    "model.detection.name": "ssd",
    "model.detection.n_classes": 81,  # set by ml-cvnets' COCO dataset (80 + background)
    "model.detection.output_stride": None,
    "model.detection.freeze_batch_norm": False,
    "model.detection.ssd.proj_channels": [512, 256, 256, 128, 128, 64],
    "model.detection.ssd.nms_iou_threshold": 0.5,
    "anchor_generator.name": "ssd",
    "anchor_generator.ssd.output_strides": [16, 32, 64, 128, 256, -1],
    "anchor_generator.ssd.aspect_ratios": [[2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2]],
    "anchor_generator.ssd.min_scale_ratio": 0.1,
    "anchor_generator.ssd.max_scale_ratio": 1.05,
    "anchor_generator.ssd.no_clipping": False,
    "anchor_generator.ssd.step": [1],
    "matcher.name": "ssd",
    "matcher.ssd.center_variance": 0.1,
    "matcher.ssd.size_variance": 0.2,
    "matcher.ssd.iou_threshold": 0.5,
}


def reference_state(layout: dict, seed: int = STATE_SEED, bn_gain: float = 1.0) -> dict[str, torch.Tensor]:
    """A random state dict of the layout's keys and shapes, like ``cvnets_fixtures.random_state`` but
    scaled so the signal survives the depth: conv/linear weights N(0, 1/fan_in), norm weights
    1 + N(0, 0.01), biases and running means N(0, 0.01), running variances U(0.5, 1.5). (random_state's
    N(0, 0.01) everywhere shrinks activations until the outputs hardly depend on the image, which
    would hide, e.g., a missing BGR flip.) ``bn_gain`` scales the weights of the convolutions' batch norms
    (keys ``*.norm.weight``) after drawing: MobileViT v1's encoder loses the image on the way down with
    gain 1 (its Swish halves small activations; v0.1's DeepLabv3 logits change by 1.5e-3 from one image
    to another at output stride 16, ~5e-4 at 8), while gain 1.3 starts to blow up the residual sums and
    1.4 gives logits of ~25, where float32 rounding alone parts ours from ml-cvnets by 2.5e-5."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout["state_dict"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10**6, (), generator=gen)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        elif key.endswith("weight") and len(shape) >= 2:
            fan_in = 1
            for n in shape[1:]:
                fan_in *= n
            state[key] = torch.randn(shape, generator=gen) / fan_in**0.5
        elif key.endswith("weight"):
            state[key] = 1 + torch.randn(shape, generator=gen) * 0.1
        else:  # biases, running means
            state[key] = torch.randn(shape, generator=gen) * 0.1
    if bn_gain != 1.0:
        for key in state:
            if key.endswith(".norm.weight"):
                state[key] = state[key] * bn_gain
    return state


def import_cvnets(checkout: Path) -> None:
    """Make ``checkout`` the ``cvnets`` (and ``utils``, ``common``, ``options``) package of this process."""
    for name in list(sys.modules):
        if name.split(".")[0] in ("cvnets", "utils", "common", "options"):
            del sys.modules[name]
    sys.path.insert(0, str(checkout.resolve()))


def namespace(options: dict) -> argparse.Namespace:
    opts = argparse.Namespace()
    for key, value in options.items():
        setattr(opts, key, value)
    return opts


def fill_random(model: torch.nn.Module, layout_name: str, bn_gain: float = 1.0) -> dict:
    """Load reference_state(layout) into the official model, after checking the layout is its state_dict."""
    layout = load_layout(layout_name)
    official = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    expected = [(k, list(s)) for k, s in layout["state_dict"]]
    if official != expected:
        raise SystemExit(f"{layout_name}: the official state_dict differs from the layout fixture")
    model.load_state_dict(reference_state(layout, seed=STATE_SEED, bn_gain=bn_gain), strict=True)
    meta = {"layout": layout_name, "state_seed": STATE_SEED, "num_classes": layout["num_classes"]}
    return {**meta, "state_bn_gain": bn_gain} if bn_gain != 1.0 else meta


def fill_random_embedded(model: torch.nn.Module, num_classes: int, bn_gain: float = 1.0) -> dict:
    """Load reference_state into the official model, with its own state_dict's keys and shapes as the
    layout (no layout fixture: tests/fixtures/cvnets has one per published layout); the layout goes into
    the reference's JSON, from which the test regenerates the state."""
    layout = {"state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()]}
    model.load_state_dict(reference_state(layout, seed=STATE_SEED, bn_gain=bn_gain), strict=True)
    meta = {"layout": None, "state_seed": STATE_SEED, "num_classes": num_classes, **layout}
    return {**meta, "state_bn_gain": bn_gain} if bn_gain != 1.0 else meta


def subsample(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    start, step = SUBSAMPLE
    index = [slice(None)] * x.dim()
    for d in dims:
        index[d] = slice(start, None, step)
    return x[tuple(index)].contiguous()


@torch.no_grad()
def deeplabv3_v01(out: Path) -> None:
    from cvnets.models.segmentation import build_segmentation_model

    model = build_segmentation_model(namespace(SEG_V01)).eval()
    meta = fill_random(model, "deeplabv3_mobilevit_xxs_cvnets_v0.1", bn_gain=V1_BN_GAIN)
    captured = {}
    model.seg_head.classifier.classifier.register_forward_hook(lambda m, i, o: captured.update(logits=o))
    tensors = {}
    for name, (h, w, seed) in SEG_INPUTS.items():
        x = structured_images(2, h, w, seed=seed)
        resized = model(x.flip(1))  # BGR, as ml-cvnets v1 weights take
        tensors[f"{name}.logits"] = captured["logits"].clone()
        tensors[f"{name}.resized_sub"] = subsample(resized, (2, 3))
        tensors[f"{name}.resized_sum"] = resized.sum(dim=(2, 3))
        meta.setdefault("inputs", {})[name] = {"height": h, "width": w, "seed": seed, "official_input": "x.flip(1)"}
    meta.update(
        model="deeplabv3_mobilevit_xxs",
        cvnets="cvnets-v0.1 (d38a116fe134)",
        config="config/segmentation/deeplabv3_mobilevit_xx_small.yaml",
        options={k: v for k, v in SEG_V01.items()},
        resize="UpSample(scale_factor=16, mode='bilinear', align_corners=False) in seg_head.classifier",
        subsample=list(SUBSAMPLE),
    )
    save(out, "deeplabv3_mobilevit_xxs_cvnets_v0.1", tensors, meta)


@torch.no_grad()
def ssd_v01(out: Path) -> None:
    from cvnets.models.detection import build_detection_model

    model = build_detection_model(namespace(DET_V01)).eval()
    meta = fill_random(model, "ssdlite_mobilevit_xxs_cvnets_v0.1", bn_gain=V1_BN_GAIN)
    tensors = {}
    for name, (h, w, seed) in DET_INPUTS.items():
        x = structured_images(2, h, w, seed=seed)
        confidences, locations, anchors = model.ssd_forward(x.flip(1), is_prediction=True)
        plain_conf, plain_loc = model(x.flip(1))
        assert torch.equal(plain_conf, confidences) and torch.equal(plain_loc, locations)
        tensors |= ssd_tensors(name, confidences, locations, anchors)
        meta.setdefault("inputs", {})[name] = {"height": h, "width": w, "seed": seed, "official_input": "x.flip(1)"}
    meta.update(
        model="ssdlite_mobilevit_xxs",
        cvnets="cvnets-v0.1 (d38a116fe134)",
        config="config/detection/ssd_mobilevit_xx_small_320.yaml",
        options={k: v for k, v in DET_V01.items()},
        anchors_per_location=model.anchor_box_generator.num_anchors_per_os(),
        subsample=list(SUBSAMPLE),
    )
    save(out, "ssdlite_mobilevit_xxs_cvnets_v0.1", tensors, meta)


@torch.no_grad()
def deeplabv3_main(out: Path) -> None:
    import copy

    from cvnets.models import get_model

    model = get_model(namespace(SEG_MAIN), category="segmentation").eval()
    assert model.seg_head.aux_head is not None  # built (and in the state dict), run only in training
    meta = fill_random(model, "deeplabv3_mobilevitv2_050_cvnets_main")
    captured = {}
    model.seg_head.classifier.register_forward_hook(lambda m, i, o: captured.update(logits=o))
    tensors = {}
    for name, (h, w, seed) in SEG_INPUTS_MAIN.items():
        x = structured_images(2, h, w, seed=seed)
        # a copy: orig_size replaces the UpSample's scale_factor by a size for good
        resized = copy.deepcopy(model)(x, orig_size=(h, w))  # RGB, as ml-cvnets main's weights take
        logits = captured["logits"].clone()
        plain = copy.deepcopy(model)(x)  # UpSample(scale_factor=16, align_corners=True)
        assert torch.equal(captured["logits"], logits)
        if h % 16 == 0 and w % 16 == 0:
            assert plain.shape == resized.shape and (plain - resized).abs().max() < 1e-5
        tensors[f"{name}.logits"] = logits
        tensors[f"{name}.resized_sub"] = subsample(resized, (2, 3))
        tensors[f"{name}.resized_sum"] = resized.sum(dim=(2, 3))
        meta.setdefault("inputs", {})[name] = {
            "height": h,
            "width": w,
            "seed": seed,
            "official_input": "x",
            "official_call": "model(x, orig_size=(height, width))",
            "logits_shape": list(logits.shape),
            "plain_call_shape": list(plain.shape),  # model(x): 16 x the logits' sides
        }
    meta.update(
        model="deeplabv3_mobilevitv2_050",
        cvnets="ml-cvnets main (0c0f79822f0a)",
        config="config/segmentation/pascal_voc/deeplabv3_mobilevitv2.yaml, mitv2.width_multiplier 0.5",
        options={k: v for k, v in SEG_MAIN.items()},
        resize=(
            "BaseSegHead.upsample_seg_out = UpSample(scale_factor=16, mode='bilinear', align_corners=True); "
            "with orig_size its size is set to orig_size (ml-cvnets' evaluation passes the image size, after "
            "resizing the input down to multiples of 16 with align_corners=True)"
        ),
        aux_head="seg_head.aux_head: ConvLayer2d(192, 128, 3) + BN + ReLU, Dropout2d, ConvLayer2d(128, 21, 1); "
        "applied to out_l4 only when training",
        subsample=list(SUBSAMPLE),
    )
    save(out, "deeplabv3_mobilevitv2_050_cvnets_main", tensors, meta)


@torch.no_grad()
def _deeplabv3_os8(model: torch.nn.Module, inputs: dict, class_subsample: bool) -> tuple[dict, dict]:
    """Reference outputs of an output-stride-8 ml-cvnets main segmenter (RGB input): the logits before the
    resize and the logits resized to the input size with ``model(x, orig_size=(H, W))``, as in
    deeplabv3_main. With ``class_subsample`` (150 ADE20K classes, to keep the fixture small) the stored
    logits are every 8th class from the 3rd, plus their sum over all classes."""
    import copy

    captured = {}
    model.seg_head.classifier.register_forward_hook(lambda m, i, o: captured.update(logits=o))
    tensors, specs = {}, {}
    for name, (h, w, seed) in inputs.items():
        x = structured_images(2, h, w, seed=seed)
        resized = copy.deepcopy(model)(x, orig_size=(h, w))  # a copy: orig_size sticks to the UpSample
        logits = captured["logits"].clone()
        plain = copy.deepcopy(model)(x)  # UpSample(scale_factor=8, align_corners=True)
        assert torch.equal(captured["logits"], logits)
        if plain.shape == resized.shape:  # not where MobileViTBlockv2 resized odd maps to even sides
            assert (plain - resized).abs().max() < 1e-5
        if class_subsample:
            tensors[f"{name}.logits_sub"] = subsample(logits, (1,))
            tensors[f"{name}.logits_class_sum"] = logits.sum(1)
            tensors[f"{name}.resized_sub"] = subsample(resized, (1, 2, 3))
        else:
            tensors[f"{name}.logits"] = logits
            tensors[f"{name}.resized_sub"] = subsample(resized, (2, 3))
        tensors[f"{name}.resized_sum"] = resized.sum(dim=(2, 3))
        specs[name] = {
            "height": h,
            "width": w,
            "seed": seed,
            "official_input": "x",
            "official_call": "model(x, orig_size=(height, width))",
            "logits_shape": list(logits.shape),
            "plain_call_shape": list(plain.shape),  # model(x): 8 x the logits' sides
        }
    return tensors, specs


RESIZE_OS8 = (
    "BaseSegHead.upsample_seg_out = UpSample(scale_factor=8, mode='bilinear', align_corners=True); with "
    "orig_size its size is set to orig_size (ml-cvnets' evaluation passes the image size)"
)


def _save_embedded(out: Path, name: str, tensors: dict, meta: dict) -> None:
    meta["state_dict"] = meta.pop("state_dict")  # the long layout last
    save(out, name, tensors, meta)


@torch.no_grad()
def deeplabv3_ade20k_main(out: Path) -> None:
    from cvnets.models import get_model

    model = get_model(namespace(SEG_ADE20K_MAIN), category="segmentation").eval()
    assert model.seg_head.aux_head is not None  # built (and in the state dict), run only in training
    meta = fill_random_embedded(model, num_classes=150)
    tensors, meta["inputs"] = _deeplabv3_os8(model, SEG_INPUTS_OS8, class_subsample=True)
    meta.update(
        model="deeplabv3_mobilevitv2_050",
        model_kwargs={"output_stride": 8, "aspp_rates": [12, 24, 36], "align_corners": True},
        cvnets="ml-cvnets main (0c0f79822f0a)",
        config="config/segmentation/ade20k/deeplabv3_mobilevitv2.yaml, mitv2.width_multiplier 0.5",
        options={k: v for k, v in SEG_ADE20K_MAIN.items()},
        resize=RESIZE_OS8,
        aux_head="seg_head.aux_head: ConvLayer2d(192, 128, 3) + BN + ReLU, Dropout2d, ConvLayer2d(128, 150, 1); "
        "applied to out_l4 only when training",
        subsample=list(SUBSAMPLE),
        class_subsample=True,
    )
    _save_embedded(out, "deeplabv3_mobilevitv2_050_ade20k_cvnets_main", tensors, meta)


def _plain_layer_norm(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the model whose LayerNorms are always nn.LayerNorm over the last dimension."""
    import copy

    model = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, torch.nn.LayerNorm):
            m.forward = torch.nn.LayerNorm.forward.__get__(m)
    return model


@torch.no_grad()
def deeplabv3_v1_main(out: Path) -> None:
    """ml-cvnets main's MobileViT v1 (classification/mobilevit.py, MobileViTBlock, TransformerEncoder,
    MultiHeadAttention) is v0.1's, but its LayerNorm (layers/normalization/layer_norm.py) takes a 3-D
    input whose dim 1 equals the normalized size for channel-first and normalizes over dim 1, as
    (x - mean) / (std + eps). In MobileViTBlock that input is the [B*P, N, C] patch tensor, so where
    the number of patches N equals the transformer dim C, the block normalizes over the patches
    instead. The reference records that case (SEG_INPUT_LN_QUIRK) twice: as ml-cvnets main computes
    it, and with every LayerNorm the plain nn.LayerNorm over C (v0.1's, and ours)."""
    from cvnets.layers.normalization.layer_norm import LayerNorm
    from cvnets.models import get_model

    model = get_model(namespace(SEG_V1_MAIN), category="segmentation").eval()
    assert model.seg_head.aux_head is not None
    assert all(type(m) is LayerNorm for m in model.modules() if isinstance(m, torch.nn.LayerNorm))
    meta = fill_random_embedded(model, num_classes=21, bn_gain=V1_BN_GAIN)
    tensors, meta["inputs"] = _deeplabv3_os8(model, {**SEG_INPUTS_OS8, **SEG_INPUT_LN_QUIRK}, class_subsample=False)
    channel_first = set()  # the LayerNorms that take the channel-first branch at the quirk's sizes
    hooks = [
        m.register_forward_pre_hook(
            lambda m, args, name=name: (
                channel_first.add(name) if args[0].dim() > 2 and args[0].shape[1] == m.normalized_shape[0] else None
            )
        )
        for name, m in model.named_modules()
        if isinstance(m, LayerNorm)
    ]
    for h, w, seed in SEG_INPUTS_OS8.values():
        model(structured_images(2, h, w, seed=seed))
    assert not channel_first
    for h, w, seed in SEG_INPUT_LN_QUIRK.values():
        model(structured_images(2, h, w, seed=seed))
    for hook in hooks:
        hook.remove()
    plain, changes = _plain_layer_norm(model), {}
    for name, (h, w, seed) in {**SEG_INPUTS_OS8, **SEG_INPUT_LN_QUIRK}.items():
        x = structured_images(2, h, w, seed=seed)
        logits = plain.seg_head.forward_seg_head(plain.encoder.extract_end_points_all(x, use_l5=True))
        if name in SEG_INPUT_LN_QUIRK:
            tensors[f"{name}.logits_plain_layer_norm"] = logits
            changes[name] = (logits - tensors[f"{name}.logits"]).abs().max().item()
        else:  # N != C everywhere: the same function
            assert (logits - tensors[f"{name}.logits"]).abs().max() < 1e-5
    meta.update(
        model="deeplabv3_mobilevit_xxs",
        model_kwargs={"output_stride": 8, "aspp_channels": 512, "aspp_rates": [12, 24, 36], "align_corners": True},
        cvnets="ml-cvnets main (0c0f79822f0a)",
        config="config/segmentation/pascal_voc/deeplabv3_mobilevit.yaml, mit.mode xx_small (the YAML's is small)",
        options={k: v for k, v in SEG_V1_MAIN.items()},
        resize=RESIZE_OS8,
        aux_head="seg_head.aux_head: ConvLayer2d(64, 128, 3) + BN + ReLU, Dropout2d, ConvLayer2d(128, 21, 1); "
        "applied to out_l4 only when training",
        layer_norm_quirk={
            "inputs": list(SEG_INPUT_LN_QUIRK),
            "channel_first_layer_norms": sorted(channel_first),  # layer_4.1: N = 80 patches = its dim 80
            "max_abs_logit_change": changes,
            "plain": "{size}.logits_plain_layer_norm: the logits with nn.LayerNorm.forward in every LayerNorm",
        },
        subsample=list(SUBSAMPLE),
    )
    _save_embedded(out, "deeplabv3_mobilevit_xxs_cvnets_main", tensors, meta)


@torch.no_grad()
def ssd_main(out: Path) -> None:
    from cvnets.models import get_model

    model = get_model(namespace(DET_MAIN), category="detection").eval()
    meta = fill_random(model, "ssdlite_mobilevitv2_050_cvnets_main")
    tensors = {}
    for name, (h, w, seed) in DET_INPUTS.items():
        x = structured_images(2, h, w, seed=seed)
        # forward() decodes boxes with the matcher and runs NMS: the raw outputs come from these two
        end_points = model.get_backbone_features(x)  # RGB, as ml-cvnets main's weights take
        confidences, locations, anchors = model.ssd_forward(end_points=end_points)
        tensors |= ssd_tensors(name, confidences, locations, anchors)
        meta.setdefault("inputs", {})[name] = {"height": h, "width": w, "seed": seed, "official_input": "x"}
    meta.update(
        model="ssdlite_mobilevitv2_050",
        cvnets="ml-cvnets main (0c0f79822f0a)",
        config="config/detection/ssd_coco/mobilevit_v2.yaml, mitv2.width_multiplier 0.5",
        options={k: v for k, v in DET_MAIN.items()},
        anchors_per_location=model.anchor_box_generator.num_anchors_per_os(),
        subsample=list(SUBSAMPLE),
    )
    save(out, "ssdlite_mobilevitv2_050_cvnets_main", tensors, meta)


def ssd_tensors(
    name: str, confidences: torch.Tensor, locations: torch.Tensor, anchors: torch.Tensor
) -> dict[str, torch.Tensor]:
    """What a fixture keeps of an SSD's raw outputs: every box, a subsample and sums of the logits."""
    return {
        f"{name}.locations": locations,
        f"{name}.confidences_sub": subsample(confidences, (1,)),
        f"{name}.confidences_anchor_sum": confidences.sum(-1),
        f"{name}.confidences_class_sum": confidences.sum(1),
        f"{name}.anchors": anchors[0],  # [N, 4] (cx, cy, w, h) / image side, clipped to [0, 1]
    }


def save(out: Path, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().float().contiguous() for k, v in tensors.items()}, out / f"{name}.pt")
    (out / f"{name}.json").write_text(json.dumps(meta, indent=1) + "\n")
    sizes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
    print(f"{name}: {sizes}")


WRITERS_V01 = {f.__name__: f for f in (deeplabv3_v01, ssd_v01)}
WRITERS_MAIN = {f.__name__: f for f in (deeplabv3_main, ssd_main, deeplabv3_ade20k_main, deeplabv3_v1_main)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cvnets-v01", type=Path, help="ml-cvnets checkout at tag cvnets-v0.1")
    parser.add_argument("--cvnets-main", type=Path, help="ml-cvnets checkout at main (0c0f79822f0a)")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "cvnets" / "reference")
    parser.add_argument("--only", nargs="+", choices=[*WRITERS_V01, *WRITERS_MAIN], help="write these references only")
    args = parser.parse_args(argv)
    if args.cvnets_v01 is None and args.cvnets_main is None:
        parser.error("give --cvnets-v01 and/or --cvnets-main")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    for checkout, writers in ((args.cvnets_v01, WRITERS_V01), (args.cvnets_main, WRITERS_MAIN)):
        if checkout is None:
            continue
        import_cvnets(checkout)
        for name, writer in writers.items():
            if args.only is None or name in args.only:
                writer(args.out)


if __name__ == "__main__":
    main()
