"""Write the state-dict layouts of Apple ml-cvnets' DeepLabv3 and SSDLite MobileViT models as test fixtures.

ml-cvnets itself could not be installed here (the PyPI package named ``cvnets`` is an unrelated
project; Apple's repository is not on PyPI and GitHub is out of reach), so this script does not
import it. Instead it spells out, module by module, the ``state_dict()`` each official model has,
following ml-cvnets' own sources (tag cvnets-v0.1 = d38a116fe134 for v1, main for v2):

- ``ConvLayer`` / ``ConvLayer2d`` (cvnets/layers/conv_layer.py): ``block.conv`` (+ ``block.norm``,
  ``block.act``); ``SeparableConv`` / ``SeparableConv2d`` (cvnets/layers/sep_conv_layer.py at v0.1,
  conv_layer.py on main): ``dw_conv`` (always with norm) then ``pw_conv``;
- ``InvertedResidual`` (cvnets/modules/mobilenetv2.py): ``block.{exp_1x1,conv_3x3,red_1x1}``;
- ``MobileViTBlock`` (cvnets/modules/mobilevit_block.py at v0.1): ``local_rep.{conv_3x3,conv_1x1}``,
  ``global_rep.{i}.pre_norm_mha.{0,1}`` / ``pre_norm_ffn.{0,1,4}`` (cvnets/modules/transformer.py,
  cvnets/layers/multi_head_attention.py), final LayerNorm ``global_rep.{n}``, ``conv_proj``, ``fusion``;
- ``MobileViTBlockv2`` (main): ``local_rep.{0,1}``, ``global_rep.{i}.pre_norm_attn.{0,1}`` and
  ``pre_norm_ffn.{0,1,3}`` (``LinearAttnFFN`` in transformer.py, ``LinearSelfAttention`` in
  cvnets/layers/linear_attention.py), final GroupNorm ``global_rep.{n}``, ``conv_proj``, no fusion;
- encoders: cvnets/models/classification/mobilevit.py + config/mobilevit.py (v1, ``conv_1``,
  ``layer_1..5``) and mobilevit_v2.py + config/mobilevit_v2.py (v2); segmentation and detection set
  ``encoder.classifier`` and ``encoder.conv_1x1_exp`` to None (segmentation/enc_dec.py, detection/ssd.py);
- DeepLabv3: cvnets/models/segmentation/heads/deeplabv3.py and base_seg_head.py (v0.1: classifier is
  ``Sequential(classifier_dropout, classifier=ConvLayer, up)``; main: ``classifier`` is a ConvLayer2d
  and ``aux_head = Sequential(ConvLayer2d 3x3, Dropout2d, ConvLayer2d 1x1)`` comes first), ASPP in
  cvnets/modules/aspp_block.py (``aspp.aspp_layer.convs.{0..4}``, pooling branch ``aspp_pool.conv_1x1``,
  ``project``);
- SSD: cvnets/models/detection/ssd.py (``extra_layers.os_{64,128,256}`` SeparableConv, ``os_-1`` =
  ``Sequential(AdaptiveAvgPool2d, ConvLayer)``) and the SSDHead of cvnets/modules/ssd.py (v0.1) /
  ssd_heads.py (main): ``proj_layer`` when proj_channels != in_channels (3x3 heads only), then
  ``loc_cls_layer`` (SeparableConv, or a 1x1 ConvLayer on the global map).

Hyper-parameters come from the YAML configs: config/segmentation/deeplabv3_mobilevit_xx_small.yaml
and config/detection/ssd_mobilevit_xx_small_320.yaml (v0.1), config/segmentation/pascal_voc/
deeplabv3_mobilevitv2.yaml (``aspp_out_channels: 512``, ``use_aux_head: true``) and
config/detection/ssd_coco/mobilevit_v2.yaml (main; width 0.5 here instead of 2.0 to keep the
fixtures small). Activations are parameter-free (swish / relu), norms are (sync) batch norm.

Only the layout (ordered keys and shapes) is written, no reference outputs: those need ml-cvnets
running. Usage: ``python scripts/cvnets_layouts.py [OUT_DIR]`` (default tests/fixtures/cvnets).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

Shape = tuple[int, ...]
Layout = list[tuple[str, Shape]]

BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
VOC_CLASSES, COCO_CLASSES = 21, 81


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """ml-cvnets' utils/math_utils.make_divisible (the TF-slim rule)."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def batch_norm(prefix: str, c: int) -> Layout:
    return [(f"{prefix}.{k}", () if k == "num_batches_tracked" else (c,)) for k in BN_KEYS]


def affine_norm(prefix: str, c: int) -> Layout:
    """LayerNorm (v1 transformer) or GroupNorm(1, c) (v2 ``layer_norm_2d``): weight and bias."""
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,))]


def conv_layer(
    prefix: str, cin: int, cout: int, k: int = 1, groups: int = 1, bias: bool = False, norm: bool = True
) -> Layout:
    """ConvLayer / ConvLayer2d: ``block.conv`` [+ ``block.norm``]; the activation has no parameters."""
    out = [(f"{prefix}.block.conv.weight", (cout, cin // groups, k, k))]
    if bias:
        out.append((f"{prefix}.block.conv.bias", (cout,)))
    return out + (batch_norm(f"{prefix}.block.norm", cout) if norm else [])


def separable_conv(prefix: str, cin: int, cout: int, bias: bool = False, norm: bool = True) -> Layout:
    """SeparableConv(2d), kernel 3: depthwise conv + norm, then pointwise conv."""
    return conv_layer(f"{prefix}.dw_conv", cin, cin, 3, groups=cin) + conv_layer(
        f"{prefix}.pw_conv", cin, cout, bias=bias, norm=norm
    )


def linear(prefix: str, cin: int, cout: int) -> Layout:
    return [(f"{prefix}.weight", (cout, cin)), (f"{prefix}.bias", (cout,))]


def inverted_residual(prefix: str, cin: int, cout: int, expand_ratio: float) -> Layout:
    hidden = make_divisible(round(cin * expand_ratio), 8)
    out = conv_layer(f"{prefix}.block.exp_1x1", cin, hidden) if expand_ratio != 1 else []
    out += conv_layer(f"{prefix}.block.conv_3x3", hidden, hidden, 3, groups=hidden)
    return out + conv_layer(f"{prefix}.block.red_1x1", hidden, cout)


def mobilevit_block_v1(prefix: str, c: int, d: int, ffn: int, n: int) -> Layout:
    out = conv_layer(f"{prefix}.local_rep.conv_3x3", c, c, 3)
    out += conv_layer(f"{prefix}.local_rep.conv_1x1", c, d, norm=False)
    for i in range(n):
        g = f"{prefix}.global_rep.{i}"
        out += affine_norm(f"{g}.pre_norm_mha.0", d)
        out += linear(f"{g}.pre_norm_mha.1.qkv_proj", d, 3 * d) + linear(f"{g}.pre_norm_mha.1.out_proj", d, d)
        out += affine_norm(f"{g}.pre_norm_ffn.0", d)
        out += linear(f"{g}.pre_norm_ffn.1", d, ffn) + linear(f"{g}.pre_norm_ffn.4", ffn, d)
    out += affine_norm(f"{prefix}.global_rep.{n}", d)
    out += conv_layer(f"{prefix}.conv_proj", d, c)
    return out + conv_layer(f"{prefix}.fusion", 2 * c, c, 3)


def mobilevit_block_v2(prefix: str, c: int, d: int, n: int, ffn_multiplier: int = 2) -> Layout:
    ffn = int((ffn_multiplier * d // 16) * 16)
    out = conv_layer(f"{prefix}.local_rep.0", c, c, 3, groups=c)
    out += conv_layer(f"{prefix}.local_rep.1", c, d, norm=False)
    for i in range(n):
        g = f"{prefix}.global_rep.{i}"
        out += affine_norm(f"{g}.pre_norm_attn.0", d)
        out += conv_layer(f"{g}.pre_norm_attn.1.qkv_proj", d, 1 + 2 * d, bias=True, norm=False)
        out += conv_layer(f"{g}.pre_norm_attn.1.out_proj", d, d, bias=True, norm=False)
        out += affine_norm(f"{g}.pre_norm_ffn.0", d)
        out += conv_layer(f"{g}.pre_norm_ffn.1", d, ffn, bias=True, norm=False)
        out += conv_layer(f"{g}.pre_norm_ffn.3", ffn, d, bias=True, norm=False)
    out += affine_norm(f"{prefix}.global_rep.{n}", d)
    return out + conv_layer(f"{prefix}.conv_proj", d, c)


# config/mobilevit.py, mode xx_small: (out_channels, transformer_channels, ffn_dim, transformer_blocks)
V1_XXS = {"stem": 16, "mv2": [(16, 1), (24, 3)], "mit": [(48, 64, 128, 2), (64, 80, 160, 4), (80, 96, 192, 3)]}


def mobilevit_v1_xxs_encoder(prefix: str = "encoder") -> tuple[Layout, dict[str, int]]:
    """Encoder without conv_1x1_exp and classifier; also returns the channels of layer4 and layer5."""
    exp = 2  # mv2_exp_mult of xx_small
    c = V1_XXS["stem"]
    out = conv_layer(f"{prefix}.conv_1", 3, c, 3)
    channels = {}
    for li, (cout, blocks) in enumerate(V1_XXS["mv2"], start=1):
        for b in range(blocks):
            out += inverted_residual(f"{prefix}.layer_{li}.{b}", c, cout, exp)
            c = cout
        channels[f"layer{li}"] = c
    for li, (cout, d, ffn, n) in enumerate(V1_XXS["mit"], start=3):
        out += inverted_residual(f"{prefix}.layer_{li}.0", c, cout, exp)
        c = cout
        out += mobilevit_block_v1(f"{prefix}.layer_{li}.1", c, d, ffn, n)
        channels[f"layer{li}"] = c
    return out, channels


def mobilevit_v2_encoder(width: float, prefix: str = "encoder") -> tuple[Layout, dict[str, int]]:
    """config/mobilevit_v2.py at ``width``: stem, two MV2 layers, three MobileViTv2 layers (2, 4, 3 blocks)."""
    exp = 2
    c = int(make_divisible(max(16, min(64, 32 * width)), 8, 16))
    out = conv_layer(f"{prefix}.conv_1", 3, c, 3)
    channels = {}
    mv2 = [(int(make_divisible(64 * width, 16)), 1), (int(make_divisible(128 * width, 8)), 2)]
    for li, (cout, blocks) in enumerate(mv2, start=1):
        for b in range(blocks):
            out += inverted_residual(f"{prefix}.layer_{li}.{b}", c, cout, exp)
            c = cout
        channels[f"layer{li}"] = c
    mit = [(256, 128, 2), (384, 192, 4), (512, 256, 3)]
    for li, (cout, d, n) in enumerate(mit, start=3):
        cout, d = int(make_divisible(cout * width, 8)), int(make_divisible(d * width, 8))
        out += inverted_residual(f"{prefix}.layer_{li}.0", c, cout, exp)
        c = cout
        out += mobilevit_block_v2(f"{prefix}.layer_{li}.1", c, d, n)
        channels[f"layer{li}"] = c
    return out, channels


def aspp(prefix: str, cin: int, cout: int) -> Layout:
    out = conv_layer(f"{prefix}.convs.0", cin, cout)
    for i in (1, 2, 3):  # ASPPConv(2d): 3x3, dilation 6, 12, 18
        out += conv_layer(f"{prefix}.convs.{i}", cin, cout, 3)
    out += conv_layer(f"{prefix}.convs.4.aspp_pool.conv_1x1", cin, cout)
    return out + conv_layer(f"{prefix}.project", 5 * cout, cout)


def deeplabv3_v1_xxs() -> Layout:
    encoder, ch = mobilevit_v1_xxs_encoder()
    head = aspp("seg_head.aspp.aspp_layer", ch["layer5"], 256)
    head += conv_layer("seg_head.classifier.classifier", 256, VOC_CLASSES, bias=True, norm=False)
    return encoder + head


def deeplabv3_v2(width: float) -> Layout:
    encoder, ch = mobilevit_v2_encoder(width)
    inner = max(ch["layer4"] // 4, 128)
    head = conv_layer("seg_head.aux_head.0", ch["layer4"], inner, 3)
    head += conv_layer("seg_head.aux_head.2", inner, VOC_CLASSES, bias=True, norm=False)
    head += aspp("seg_head.aspp.aspp_layer", ch["layer5"], 512)
    head += conv_layer("seg_head.classifier", 512, VOC_CLASSES, bias=True, norm=False)
    return encoder + head


# ssd_mobilevit_*_320.yaml / ssd_coco/mobilevit_v2.yaml
SSD_OUTPUT_STRIDES = (16, 32, 64, 128, 256, -1)
SSD_PROJ_CHANNELS = (512, 256, 256, 128, 128, 64)
SSD_ANCHORS = (6, 6, 6, 6, 6, 4)  # 2 + 2 * len(aspect ratios): [2, 3] five times, then [2]


def ssd(encoder: Layout, ch: dict[str, int]) -> Layout:
    extra: Layout = []
    heads: Layout = []
    in_channels = ch["layer5"]
    enc_channels = []
    for os, proj in zip(SSD_OUTPUT_STRIDES, SSD_PROJ_CHANNELS, strict=True):
        if os in (16, 32):
            enc_channels.append(ch["layer4" if os == 16 else "layer5"])
        elif os == -1:
            extra += conv_layer("extra_layers.os_-1.1", in_channels, proj, norm=False)
            enc_channels.append(proj)
            in_channels = proj
        else:
            extra += separable_conv(f"extra_layers.os_{os}", in_channels, proj)
            enc_channels.append(proj)
            in_channels = proj
    for i, (os, cin, proj, anchors) in enumerate(
        zip(SSD_OUTPUT_STRIDES, enc_channels, SSD_PROJ_CHANNELS, SSD_ANCHORS, strict=True)
    ):
        kernel = 1 if os == -1 else 3
        if proj != cin and kernel > 1:
            heads += conv_layer(f"ssd_heads.{i}.proj_layer", cin, proj)
            cin = proj
        out = anchors * (4 + COCO_CLASSES)
        if kernel == 1:
            heads += conv_layer(f"ssd_heads.{i}.loc_cls_layer", cin, out, bias=True, norm=False)
        else:
            heads += separable_conv(f"ssd_heads.{i}.loc_cls_layer", cin, out, bias=True, norm=False)
    return encoder + extra + heads


LAYOUTS = {
    "deeplabv3_mobilevit_xxs_cvnets_v0.1": ("deeplabv3_mobilevit_xxs", VOC_CLASSES, deeplabv3_v1_xxs),
    "deeplabv3_mobilevitv2_050_cvnets_main": ("deeplabv3_mobilevitv2_050", VOC_CLASSES, lambda: deeplabv3_v2(0.5)),
    "ssdlite_mobilevit_xxs_cvnets_v0.1": (
        "ssdlite_mobilevit_xxs",
        COCO_CLASSES,
        lambda: ssd(*mobilevit_v1_xxs_encoder()),
    ),
    "ssdlite_mobilevitv2_050_cvnets_main": (
        "ssdlite_mobilevitv2_050",
        COCO_CLASSES,
        lambda: ssd(*mobilevit_v2_encoder(0.5)),
    ),
}


def main(out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (model, num_classes, build) in LAYOUTS.items():
        layout = build()
        keys = [k for k, _ in layout]
        assert len(set(keys)) == len(keys), f"duplicate keys in {name}"
        params = sum(
            _numel(s) for k, s in layout if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))
        )
        doc = {
            "layout": name,
            "model": model,
            "num_classes": num_classes,
            "parameters": params,
            "state_dict": [[k, list(s)] for k, s in layout],
        }
        path = out_dir / f"{name}.json"
        head = json.dumps({k: v for k, v in doc.items() if k != "state_dict"})[:-1]
        rows = ",\n".join(json.dumps(row) for row in doc["state_dict"])
        path.write_text(f'{head}, "state_dict": [\n{rows}\n]}}\n')
        print(f"{path}: {len(layout)} tensors, {params:,} parameters")


def _numel(shape: Shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent.parent / "tests/fixtures/cvnets")
