"""Rename the state dicts of timm, Hugging Face and ml-cvnets MobileViT ports to this project's keys.

Each source is a list of regex rewrites applied in order to every key. Two sources need more than
renaming: Hugging Face stores q, k and v as three linears (fused back here), and both Hugging Face
and ml-cvnets weights were trained on BGR input, so their stem's input channels are reversed to make
every converted model take RGB.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping

import torch

SOURCES = ("timm", "hf", "cvnets", "mobilevit")
STEM_WEIGHT = "stem.conv.weight"

_Rules = list[tuple[str, str]]

_TIMM: _Rules = [
    (r"\.conv1_1x1\.", ".expand."),
    (r"\.conv2_kxk\.", ".depthwise."),
    (r"\.conv3_1x1\.", ".project."),
    (r"^(stages\.\d+\.1)\.conv_kxk\.", r"\1.local_rep.conv_kxk."),
    (r"^(stages\.\d+\.1)\.conv_1x1\.", r"\1.local_rep.conv_1x1."),
    (r"^(stages\.\d+\.1)\.transformer\.(\d+)\.", r"\1.global_rep.layers.\2."),
    (r"^(stages\.\d+\.1)\.norm\.", r"\1.global_rep.norm."),
    (r"\.conv_fusion\.", ".fusion."),
]

_HF: _Rules = [
    (r"^mobilevit\.conv_stem\.", "stem."),
    (r"^mobilevit\.conv_1x1_exp\.", "final_conv."),
    (r"^classifier\.", "head.fc."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.layer\.(\d+)\.", r"stages.\1.\2."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.downsampling_layer\.", r"stages.\1.0."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.conv_kxk\.", r"stages.\1.1.local_rep.conv_kxk."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.conv_1x1\.convolution\.", r"stages.\1.1.local_rep.conv_1x1."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.", r"stages.\1.1.global_rep.layers.\2."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.layernorm\.", r"stages.\1.1.global_rep.norm."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.conv_projection\.", r"stages.\1.1.conv_proj."),
    (r"^mobilevit\.encoder\.layer\.(\d+)\.fusion\.", r"stages.\1.1.fusion."),
    (r"\.attention\.attention\.(query|key|value)\.", r".attn.\1."),
    (r"\.attention\.output\.dense\.", ".attn.proj."),
    (r"\.intermediate\.dense\.", ".mlp.fc1."),
    (r"\.output\.dense\.", ".mlp.fc2."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.expand_1x1\.", ".expand."),
    (r"\.conv_3x3\.", ".depthwise."),
    (r"\.reduce_1x1\.", ".project."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
]

# MobileViTv2 needs no rules of its own for timm (our v2 names follow timm's v1 names); Hugging Face
# names it ``mobilevitv2.*`` with other layer names.
_HF_V2_PREFIX = "mobilevitv2."
_HF_V2: _Rules = [
    (r"^mobilevitv2\.conv_stem\.", "stem."),
    (r"^classifier\.", "head.fc."),
    (r"^mobilevitv2\.encoder\.layer\.(\d+)\.layer\.(\d+)\.", r"stages.\1.\2."),
    (r"^mobilevitv2\.encoder\.layer\.(\d+)\.downsampling_layer\.", r"stages.\1.0."),
    (r"^mobilevitv2\.encoder\.layer\.(\d+)\.conv_kxk\.", r"stages.\1.1.local_rep.conv_kxk."),
    (r"^mobilevitv2\.encoder\.layer\.(\d+)\.conv_1x1\.convolution\.", r"stages.\1.1.local_rep.conv_1x1."),
    (r"^mobilevitv2\.encoder\.layer\.(\d+)\.transformer\.layer\.(\d+)\.", r"stages.\1.1.global_rep.layers.\2."),
    (r"^mobilevitv2\.encoder\.layer\.(\d+)\.layernorm\.", r"stages.\1.1.global_rep.norm."),
    (r"^mobilevitv2\.encoder\.layer\.(\d+)\.conv_projection\.", r"stages.\1.1.conv_proj."),
    (r"\.attention\.(qkv_proj|out_proj)\.convolution\.", r".attn.\1."),
    (r"\.ffn\.conv(\d)\.convolution\.", r".mlp.fc\1."),
    (r"\.layernorm_before\.", ".norm1."),
    (r"\.layernorm_after\.", ".norm2."),
    (r"\.expand_1x1\.", ".expand."),
    (r"\.conv_3x3\.", ".depthwise."),
    (r"\.reduce_1x1\.", ".project."),
    (r"\.convolution\.", ".conv."),
    (r"\.normalization\.", ".bn."),
]

# ml-cvnets v1 and v2 (``MobileViTBlockv2`` and ``LinearAttnFFN``) share every rule from the stem to
# the MV2 blocks. v2's own: its local convs and classifier are unnamed Sequential entries, its FFN
# linears are 1x1 ConvLayer2d (``.conv.``, fc2 at index 3), and its attention is ``pre_norm_attn``.
_CVNETS: _Rules = [
    (r"\.block\.", "."),
    (r"^conv_1\.", "stem."),
    (r"^conv_1x1_exp\.", "final_conv."),
    (r"^classifier\.(fc|1)\.", "head.fc."),
    (r"^layer_(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}."),
    (r"\.local_rep\.(conv_3x3|0)\.", ".local_rep.conv_kxk."),
    (r"\.local_rep\.(conv_1x1|1)\.conv\.", ".local_rep.conv_1x1."),
    (r"\.global_rep\.(\d+)\.pre_norm_attn\.0\.", r".global_rep.layers.\1.norm1."),
    (r"\.global_rep\.(\d+)\.pre_norm_attn\.1\.(qkv_proj|out_proj)\.conv\.", r".global_rep.layers.\1.attn.\2."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.1\.conv\.", r".global_rep.layers.\1.mlp.fc1."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.3\.conv\.", r".global_rep.layers.\1.mlp.fc2."),
    (r"\.global_rep\.(\d+)\.(weight|bias)$", r".global_rep.norm.\2"),
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.0\.", r".global_rep.layers.\1.norm1."),
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.qkv_proj\.", r".global_rep.layers.\1.attn.qkv."),
    (r"\.global_rep\.(\d+)\.pre_norm_mha\.1\.out_proj\.", r".global_rep.layers.\1.attn.proj."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.0\.", r".global_rep.layers.\1.norm2."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.1\.", r".global_rep.layers.\1.mlp.fc1."),
    (r"\.global_rep\.(\d+)\.pre_norm_ffn\.4\.", r".global_rep.layers.\1.mlp.fc2."),
    (r"\.exp_1x1\.", ".expand."),
    (r"\.conv_3x3\.", ".depthwise."),
    (r"\.red_1x1\.", ".project."),
    (r"(?<!global_rep)\.norm\.", ".bn."),
]

# DeepLabv3 heads: Hugging Face's ``segmentation_head.*`` and ml-cvnets' ``seg_head.*``. ml-cvnets
# v0.1 wraps its classifier ConvLayer in a Sequential (dropout, ``classifier``, upsample): it becomes
# ``classifier.classifier.block.conv``; later versions name the ConvLayer ``classifier`` directly.
_SEGMENTATION_HEAD: _Rules = [
    (r"^(segmentation_head|seg_head)\.", "head."),
    (r"\.(aspp_layer|aspp_pool|block)\.", "."),
    (r"\.convolution\.", ".conv."),
    (r"\.(normalization|norm)\.", ".bn."),
    (r"^head\.classifier\.(classifier\.)?conv\.", "head.classifier."),
]
_SEGMENTATION_HEADS = ("segmentation_head.", "seg_head.")
_BACKBONE_PREFIX = "backbone."
# ml-cvnets v2 recipes train with an auxiliary head on layer4 (``use_aux_head: true``); it only adds a
# training loss, and our model has none, so its weights are left out.
_AUX_HEAD_PREFIX = "seg_head.aux_head."

# ml-cvnets' SSD (``encoder.*`` + ``extra_layers.*`` + ``ssd_heads.*``). Its extra layers are a
# ModuleDict keyed by output stride; ours are a list in the same order (strides 64, 128, 256, then the
# global 1x1 map, whose ConvLayer is entry 1 of ``Sequential(pool, conv)``). Its SSDHead is ours
# renamed: ``proj_layer`` -> ``proj``, ``loc_cls_layer`` -> ``loc_cls``, whose last conv predicts box
# offsets and class logits of every anchor interleaved the same way ([4 + K] per anchor, (cx, cy, w, h)
# first), so no tensor needs reordering. Our predictors' last conv is a bare Conv2d: no ``.conv``.
_SSD_EXTRA_INDEX = {"64": 0, "128": 1, "256": 2, "-1": 3}
_DETECTOR: _Rules = [
    (r"^extra_layers\.os_(-?\d+)\.(1\.)?", lambda m: f"backbone.extra.{_SSD_EXTRA_INDEX[m.group(1)]}."),
    (r"^ssd_heads\.(\d+)\.proj_layer\.", r"head.predictors.\1.proj."),
    (r"^ssd_heads\.(\d+)\.loc_cls_layer\.", r"head.predictors.\1.loc_cls."),
    (r"\.block\.", "."),
    (r"\.norm\.", ".bn."),
    (r"\.loc_cls\.(pw_conv\.)?conv\.", r".loc_cls.\1"),
]
_DETECTOR_KEYS = ("ssd_heads.", "extra_layers.")
_ENCODER_PREFIX = "encoder."

_RULES: dict[str, _Rules] = {"timm": _TIMM, "hf": _HF, "cvnets": _CVNETS, "mobilevit": []}
_BGR_SOURCES = ("hf", "cvnets")


def detect_source(keys: list[str]) -> str:
    """Name the port a state dict comes from by its key names."""
    if any(k.startswith(("mobilevit.", _HF_V2_PREFIX)) for k in keys):
        return "hf"
    if any(k.startswith(("conv_1.", "layer_1.")) for k in keys):
        return "cvnets"
    if any(".conv1_1x1." in k or ".conv_fusion." in k for k in keys):
        return "timm"
    if any(".expand.conv." in k or ".local_rep." in k for k in keys):
        return "mobilevit"
    sample = ", ".join(keys[:5]) or "no keys at all"
    raise ValueError(
        "cannot tell which MobileViT port this state dict comes from (expected timm, Hugging Face or "
        f"ml-cvnets key names); first keys: {sample}. Pass source='timm', 'hf' or 'cvnets' explicitly."
    )


def _rename(key: str, rules: _Rules) -> str:
    for pattern, replacement in rules:
        key = re.sub(pattern, replacement, key)
    return key


def _fuse_qkv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate Hugging Face's separate query, key and value linears into one qkv linear."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = re.match(r"^(.*\.attn)\.(query|key|value)\.(weight|bias)$", key)
        if match is None:
            out[key] = value
        elif match.group(2) == "query":
            prefix, kind = match.group(1), match.group(3)
            parts = [state_dict.get(f"{prefix}.{p}.{kind}") for p in ("query", "key", "value")]
            if any(p is None for p in parts):
                raise ValueError(f"incomplete attention weights under {prefix}: need query, key and value")
            out[f"{prefix}.qkv.{kind}"] = torch.cat(parts, dim=0)
    return out


def _convert_backbone(
    encoder: dict[str, torch.Tensor], source: str, bgr: bool | None, prefix: str
) -> dict[str, torch.Tensor]:
    """A classifier's state dict (without its task head) under ``prefix``, by the classifier rules
    (stem flip included). Its classifier layers, if the file kept them, are dropped: dense tasks do
    not use them."""
    encoder = {k.removeprefix(_ENCODER_PREFIX): v for k, v in encoder.items()}
    backbone = convert_state_dict(encoder, source, bgr=bgr)
    return {prefix + k: v for k, v in backbone.items() if not k.startswith(("final_conv.", "head.fc."))}


def _convert_segmentation(state: dict[str, torch.Tensor], source: str, bgr: bool | None) -> dict[str, torch.Tensor]:
    """A Hugging Face (``mobilevit.*`` + ``segmentation_head.*``) or ml-cvnets (``encoder.*`` +
    ``seg_head.*``) DeepLabv3 state dict with our ``backbone.*`` + ``head.*`` keys."""
    aux = [k for k in state if k.startswith(_AUX_HEAD_PREFIX)]
    if aux:
        warnings.warn(
            f"dropped {len(aux)} tensors of ml-cvnets' auxiliary segmentation head ({_AUX_HEAD_PREFIX}*): "
            "it only serves a training loss and this model has none",
            stacklevel=3,
        )
    head = {k: v for k, v in state.items() if k.startswith(_SEGMENTATION_HEADS) and k not in aux}
    encoder = {k: v for k, v in state.items() if not k.startswith(_SEGMENTATION_HEADS)}
    out = _convert_backbone(encoder, source, bgr, _BACKBONE_PREFIX)
    out.update({_rename(k, _SEGMENTATION_HEAD): v for k, v in head.items()})
    return out


def _convert_detector(state: dict[str, torch.Tensor], source: str, bgr: bool | None) -> dict[str, torch.Tensor]:
    """An ml-cvnets SSD state dict (``encoder.*`` + ``extra_layers.*`` + ``ssd_heads.*``) with our
    SSDLite keys: ``backbone.body.*`` (the features backbone), ``backbone.extra.*`` and ``head.*``."""
    encoder = {k: v for k, v in state.items() if not k.startswith(_DETECTOR_KEYS)}
    out = _convert_backbone(encoder, source, bgr, _BACKBONE_PREFIX + "body.")
    out.update({_rename(k, _DETECTOR): v for k, v in state.items() if k.startswith(_DETECTOR_KEYS)})
    return out


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str = "auto", bgr: bool | None = None
) -> dict[str, torch.Tensor]:
    """Return ``state_dict`` with this project's key names.

    ``source`` is ``"timm"``, ``"hf"``, ``"cvnets"``, ``"mobilevit"`` (already ours) or ``"auto"``
    (detected from the keys). A ``module.`` prefix left by DistributedDataParallel is removed.
    Weights from ``hf`` and ``cvnets`` were trained on BGR images: their stem is flipped so the
    converted model takes RGB, like every other model of this package; ``bgr`` overrides that
    default where the weights' origin is known (the published-weights table says it per copy).
    DeepLabv3 checkpoints of both become ``backbone.*`` + ``head.*`` (ml-cvnets' auxiliary head is
    dropped, with a warning); ml-cvnets SSD checkpoints (``ssd_heads.*``, ``extra_layers.*``) become
    ``backbone.body.*`` + ``backbone.extra.*`` + ``head.*``.
    """
    if source != "auto" and source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; expected one of: auto, {', '.join(SOURCES)}")
    state = {re.sub(r"^module\.", "", k): v for k, v in state_dict.items()}
    if any(k.startswith(_SEGMENTATION_HEADS) for k in state):
        return _convert_segmentation(state, source, bgr)
    if any(k.startswith(_DETECTOR_KEYS) for k in state):
        return _convert_detector(state, source, bgr)
    if source == "auto":
        source = detect_source(list(state))
    rules = _HF_V2 if source == "hf" and any(k.startswith(_HF_V2_PREFIX) for k in state) else _RULES[source]
    out = {_rename(k, rules): v for k, v in state.items()}
    if source == "hf":
        out = _fuse_qkv(out)
    if (source in _BGR_SOURCES if bgr is None else bgr) and STEM_WEIGHT in out:
        out[STEM_WEIGHT] = out[STEM_WEIGHT].flip(1)
    return out
