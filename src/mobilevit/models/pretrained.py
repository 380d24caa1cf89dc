"""Every published MobileViT checkpoint this package can load, one row per set of weights.

A tag (``mobilevit_s.cvnets_in1k``) names weights, not a host: each row lists the copies of the
same weights, best first (timm's safetensors on the Hub for the classifiers, then the other hosts
as fallbacks). Each copy says its file layout and whether its stem was trained on BGR images (it is
then flipped, so that every loaded model takes RGB). Ids, URLs and metrics are exactly as their
sources publish them (``../shared/reference/published-weights.md`` lists where each was found).

Not here, and why: PSPNet, Mask R-CNN and video weights (no such heads in this package); RangeAugment's
distilled classifier and ADE20K segmenter (input size and head settings unconfirmed); MobileViTv3's
(its authors publish GitHub release assets whose file names could not be confirmed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from mobilevit.hub import HubFile, Remote, UrlFile

CVNETS_LICENSE = "Apple sample code (cvnets-license)"
_CVNETS = "https://docs-assets.developer.apple.com/ml-research/models/cvnets"
_CVNETS_V2 = "https://docs-assets.developer.apple.com/ml-research/models/cvnets-v2"
_TIMM_LEGACY = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-mvit-weights"


@dataclass(frozen=True)
class Copy:
    """One published copy of a set of weights."""

    host: str  # "timm", "timm-url", "hf", "cvnets": what ``host=`` selects
    remote: Remote
    layout: str  # the converter's source: "timm", "hf" or "cvnets"
    bgr: bool  # trained on BGR images: the stem is flipped to take RGB
    model_args: Mapping[str, Any] = field(default_factory=dict)  # how this port builds the same weights


@dataclass(frozen=True)
class PublishedWeights:
    model: str
    tag: str
    copies: tuple[Copy, ...]
    metric: str
    license: str = CVNETS_LICENSE
    num_classes: int = 1000
    input_size: int = 256
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    model_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.model}.{self.tag}"

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(c.host for c in self.copies)

    def pretrained_cfg(self) -> dict[str, Any]:
        """What the weights expect at evaluation, in timm's ``pretrained_cfg`` fields."""
        return {
            "tag": self.tag,
            "input_size": (3, self.input_size, self.input_size),
            "crop_pct": self.crop_pct,
            "interpolation": self.interpolation,
            "channel_order": "RGB",
            "num_classes": self.num_classes,
            "license": self.license,
            "metric": self.metric,
        }


def _v2_width(name: str) -> str:
    """ml-cvnets' file-name width of a v2 size: ``mobilevitv2_075`` -> ``0.75``."""
    return f"{int(name[-3:]) / 100:g}"


def _cvnets(url: str, bgr: bool, model_args: Mapping[str, Any] | None = None) -> Copy:
    """ml-cvnets' own file: v0.1's (MobileViT v1) were trained on BGR images, v0.2's and later on RGB."""
    return Copy("cvnets", UrlFile(url), "cvnets", bgr, model_args or {})


def _timm(model: str, tag: str, legacy_file: str, bgr: bool = False) -> tuple[Copy, Copy]:
    return (
        Copy("timm", HubFile(f"timm/{model}.{tag}"), "timm", bgr),
        Copy("timm-url", UrlFile(f"{_TIMM_LEGACY}/{legacy_file}", legacy_file.rsplit("-", 1)[1][:8]), "timm", bgr),
    )


def _v1_classifiers() -> list[PublishedWeights]:
    rows = (
        ("mobilevit_xxs", "ad385b40", "apple/mobilevit-xx-small", "69.0", "68.936"),
        ("mobilevit_xs", "8fbd6366", "apple/mobilevit-x-small", "74.7", "74.618"),
        ("mobilevit_s", "38a5a959", "apple/mobilevit-small", "78.3", "78.298"),
    )
    published = [
        PublishedWeights(
            model,
            "cvnets_in1k",
            (
                *_timm(model, "cvnets_in1k", f"{model}-{digest}.pth"),
                Copy("hf", HubFile(repo), "hf", bgr=True),
                _cvnets(f"{_CVNETS}/classification/{model}.pt", bgr=True),
            ),
            f"ImageNet-1k top-1 {top1} (ml-cvnets; timm {timm_top1})",
        )
        for model, digest, repo, top1, timm_top1 in rows
    ]
    # RangeAugment (Mehta et al., 2022): retrained with ml-cvnets v0.2+, so on RGB images.
    range_augment = _cvnets(f"{_CVNETS_V2}/examples/range_augment/classification/mobilevit_small.pt", bgr=False)
    metric = "ImageNet-1k top-1 78.2 (ml-cvnets, EMA; corenet's log 78.194)"
    return [*published, PublishedWeights("mobilevit_s", "cvnets_rangeaugment_in1k", (range_augment,), metric)]


# v2 ImageNet weights: (size, tag, timm legacy digest, ml-cvnets top-1, timm top-1). ml-cvnets
# v0.2+ trains on PIL-decoded RGB images, so no v2 copy is flipped.
_V2_IN1K = (
    ("mobilevitv2_050", "49951ee2", "70.18", "70.156"),
    ("mobilevitv2_075", "b5556ef6", "75.56", "75.612"),
    ("mobilevitv2_100", "e464ef3b", "78.09", "78.088"),
    ("mobilevitv2_125", "0ae35027", "79.65", "79.682"),
    ("mobilevitv2_150", "737c5019", "80.38", "80.380"),
    ("mobilevitv2_175", "16462ee2", "80.84", "80.870"),
    ("mobilevitv2_200", "b3422f67", "81.17", "81.148"),
)
_V2_HF_IN1K = {
    "mobilevitv2_100": "apple/mobilevitv2-1.0-imagenet1k-256",
    "mobilevitv2_200": "apple/mobilevitv2-2.0-imagenet1k-256",
}
_V2_IN1K_384 = (
    ("mobilevitv2_050", "72.14"),
    ("mobilevitv2_075", "76.98"),
    ("mobilevitv2_100", "79.68"),
    ("mobilevitv2_125", "80.94"),
    ("mobilevitv2_150", "81.50"),
    ("mobilevitv2_175", "82.04"),
    ("mobilevitv2_200", "82.17"),
)
_V2_IN22K = (  # (size, 256 digest, 256 top-1s, 384 digest, 384 top-1s)
    ("mobilevitv2_150", "0b555d7b", ("81.46", "81.466"), "9e142854", ("82.60", "82.606")),
    ("mobilevitv2_175", "4117fa1f", ("81.94", "81.950"), "059cbe56", ("82.93", "82.920")),
    ("mobilevitv2_200", "1d7c8927", ("82.36", "82.320"), "32c87503", ("83.41", "83.430")),
)


def _v2_cvnets(folder: str, model: str) -> Copy:
    return _cvnets(f"{_CVNETS_V2}/classification/mobilevitv2/{folder}/mobilevitv2-{_v2_width(model)}.pt", bgr=False)


def _v2_classifiers() -> list[PublishedWeights]:
    rows = []
    for model, digest, top1, timm_top1 in _V2_IN1K:
        hf = (Copy("hf", HubFile(_V2_HF_IN1K[model]), "hf", bgr=False),) if model in _V2_HF_IN1K else ()
        copies = (*_timm(model, "cvnets_in1k", f"{model}-{digest}.pth"), *hf, _v2_cvnets("imagenet1k/256x256", model))
        metric = f"ImageNet-1k top-1 {top1} (ml-cvnets; timm {timm_top1})"
        rows.append(PublishedWeights(model, "cvnets_in1k", copies, metric, crop_pct=0.888))
    for model, top1 in _V2_IN1K_384:
        copies = (_v2_cvnets("imagenet1k/384x384", model),)
        rows.append(
            PublishedWeights(
                model, "cvnets_in1k_384", copies, f"ImageNet-1k top-1 {top1} (ml-cvnets)", input_size=384, crop_pct=1.0
            )
        )
    for model, digest, (top1, timm_top1), digest_384, (top1_384, timm_384) in _V2_IN22K:
        legacy = model + "_in22ft1k"
        copies = (
            *_timm(model, "cvnets_in22k_ft_in1k", f"{legacy}-{digest}.pth"),
            _v2_cvnets("imagenet21k_to_1k/256x256", model),
        )
        metric = f"ImageNet-1k top-1 {top1} (ml-cvnets; timm {timm_top1})"
        rows.append(PublishedWeights(model, "cvnets_in22k_ft_in1k", copies, metric, crop_pct=0.888))
        legacy_384 = f"{model}_384_in22ft1k-{digest_384}.pth"
        copies = (
            *_timm(model, "cvnets_in22k_ft_in1k_384", legacy_384),
            _v2_cvnets("imagenet21k_to_1k/384x384", model),
        )
        metric = f"ImageNet-1k top-1 {top1_384} (ml-cvnets; timm {timm_384})"
        rows.append(PublishedWeights(model, "cvnets_in22k_ft_in1k_384", copies, metric, input_size=384, crop_pct=1.0))
    return rows


_SEGMENTATION = {"num_classes": 21, "input_size": 512, "crop_pct": 1.0, "interpolation": "bilinear"}
_ADE20K = {**_SEGMENTATION, "num_classes": 150, "model_args": {"output_stride": 8, "aspp_rates": (12, 24, 36)}}
_DETECTION = {"num_classes": 81, "input_size": 320, "crop_pct": 1.0, "interpolation": "bilinear"}
# ml-cvnets from v0.2 on resizes segmentation logits with align_corners=True (v0.1 and Hugging Face
# do not), and Hugging Face's v2 DeepLabv3 port does not dilate the blocks' local conv (ml-cvnets does).
_CVNETS_V2_SEGMENTATION = {"align_corners": True}
_HF_V2_SEGMENTATION = {"dilate_local_conv": False}


def _v2_rows(
    task: str, tag: str, metrics: Mapping[str, str], path: str, label: str, **fields: Any
) -> list[PublishedWeights]:
    """One row per v2 width that ml-cvnets publishes ``path`` (with ``{width}``) for."""
    args = _CVNETS_V2_SEGMENTATION if task == "deeplabv3" else None
    return [
        PublishedWeights(
            f"{task}_{backbone}",
            tag,
            (_cvnets(f"{_CVNETS_V2}/{path.format(width=_v2_width(backbone))}", bgr=False, model_args=args),),
            f"{label} {metric} (ml-cvnets)",
            **fields,
        )
        for backbone, metric in metrics.items()
    ]


def _segmenters() -> list[PublishedWeights]:
    v1 = (
        ("mobilevit_xxs", "apple/deeplabv3-mobilevit-xx-small", "72.8"),
        ("mobilevit_xs", "apple/deeplabv3-mobilevit-x-small", "77.1"),
        ("mobilevit_s", "apple/deeplabv3-mobilevit-small", "79.3"),
    )
    rows = [
        PublishedWeights(
            f"deeplabv3_{backbone}",
            "cvnets_voc",
            (
                Copy("hf", HubFile(repo), "hf", bgr=True),
                _cvnets(f"{_CVNETS}/segmentation/deeplabv3_{backbone}.pt", bgr=True),
            ),
            f"PASCAL VOC 2012 val mIoU {miou} (ml-cvnets)",
            **_SEGMENTATION,
        )
        for backbone, repo, miou in v1
    ]
    retrain = _cvnets(f"{_CVNETS_V2}/segmentation/pascalvoc/deeplabv3-mobilevitv1.pt", False, _CVNETS_V2_SEGMENTATION)
    rows.append(
        PublishedWeights(
            "deeplabv3_mobilevit_s",
            "cvnets_v2_voc",
            (retrain,),
            "PASCAL VOC 2012 val mIoU 79.44 (ml-cvnets v2 retrain)",
            **_SEGMENTATION,
            model_args={"output_stride": 8, "aspp_channels": 512, "aspp_rates": (12, 24, 36)},
        )
    )
    voc = {
        "mobilevitv2_050": "75.07",
        "mobilevitv2_100": "78.94",
        "mobilevitv2_125": "79.68",
        "mobilevitv2_150": "80.30",
    }
    voc_rows = _v2_rows(
        "deeplabv3",
        "cvnets_voc",
        voc,
        "segmentation/pascalvoc/mobilevitv2/deeplabv3-mobilevitv2-{width}.pt",
        "PASCAL VOC 2012 val mIoU",
        **_SEGMENTATION,
    )
    hf = {
        "deeplabv3_mobilevitv2_100": "apple/mobilevitv2-1.0-voc-deeplabv3",
        "deeplabv3_mobilevitv2_150": "apple/mobilevitv2-1.5-voc-deeplabv3",
    }
    for row in voc_rows:  # Hugging Face also hosts two of them, ported without the local conv's dilation
        if row.model in hf:
            row = replace(
                row, copies=(*row.copies, Copy("hf", HubFile(hf[row.model]), "hf", False, _HF_V2_SEGMENTATION))
            )
        rows.append(row)
    ade20k = {
        "mobilevitv2_050": "31.93",
        "mobilevitv2_075": "34.70",
        "mobilevitv2_100": "37.06",
        "mobilevitv2_125": "38.42",
        "mobilevitv2_150": "38.91",
        "mobilevitv2_175": "39.53",
        "mobilevitv2_200": "40.94",
    }
    path = "segmentation/ade20k/mobilevitv2/deeplabv3-mobilevitv2-{width}.pt"
    return rows + _v2_rows("deeplabv3", "cvnets_ade20k", ade20k, path, "ADE20K val mIoU", **_ADE20K)


def _detectors() -> list[PublishedWeights]:
    v1 = {"mobilevit_xxs": "19.9", "mobilevit_xs": "24.8", "mobilevit_s": "27.9"}
    rows = [
        PublishedWeights(
            f"ssdlite_{backbone}",
            "cvnets_coco",
            (_cvnets(f"{_CVNETS}/detection/ssd_{backbone}_320.pt", bgr=True),),
            f"COCO val2017 mAP {ap} (ml-cvnets)",
            **_DETECTION,
        )
        for backbone, ap in v1.items()
    ]
    v2 = {
        "mobilevitv2_050": "21.24",
        "mobilevitv2_075": "24.57",
        "mobilevitv2_100": "26.47",
        "mobilevitv2_125": "27.85",
        "mobilevitv2_150": "28.83",
        "mobilevitv2_175": "29.52",
        "mobilevitv2_200": "30.21",
    }
    path = "detection/mobilevitv2/coco-ssd-mobilevitv2-{width}.pt"
    return rows + _v2_rows("ssdlite", "cvnets_coco", v2, path, "COCO val2017 mAP", **_DETECTION)


PUBLISHED_WEIGHTS: dict[str, PublishedWeights] = {
    w.name: w for w in (*_v1_classifiers(), *_v2_classifiers(), *_segmenters(), *_detectors())
}
