"""SSDLite object detection on a MobileViT backbone (paper, Section 4.2.3: COCO at 320x320).

The design follows the official ml-cvnets SSD (``cvnets/models/detection/ssd.py``,
``cvnets/modules/ssd_heads.py``, ``config/detection/ssd_coco/mobilevit.yaml``) on top of
torchvision's SSD machinery (default boxes, matcher, box coder, 3:1 hard-negative mining, batched NMS):

- feature maps at output strides 16 and 32 (backbone layer4 and layer5; the classifier's final
  1x1 conv is not used), then three depthwise-separable stride-2 layers (strides 64, 128, 256)
  and a global one (average pool, 1x1 conv): six maps, 20/10/5/3/2/1 pixels a side at 320x320;
- one predictor per map: a 1x1 conv + BN + ReLU projection to 512, 256 (strides 16, 32; the other
  maps already have 256, 128, 128, 64 channels), then a depthwise-separable 3x3 conv (1x1 on the
  global map) that predicts 4 box offsets and the class logits of every anchor together;
- anchors: aspect ratios {2, 3} (6 boxes a location), {2} on the global map (4 boxes); scales
  spaced linearly from 0.1 to 1.05; box-coder variances 0.1 / 0.2; IoU threshold 0.5;
- input: RGB in [0, 1], no mean/std normalisation, resized to 320x320 by the model.

State-dict keys: ``backbone.body.*`` are the keys of
:class:`~mobilevit.models.mobilevit.MobileViTFeatures` (``stem.*``, ``stages.*``), so a
classification checkpoint loads there with that prefix (``create_model(..., pretrained=classifier)``);
``backbone.extra.*`` are the extra layers and ``head.*`` the predictors.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms, clip_boxes_to_image

from mobilevit.models.backbones import (
    BACKBONES,
    BackboneConfig,
    backbone_features,
    config_fields,
    resolve_backbone_config,
)
from mobilevit.models.layers import ConvNormAct
from mobilevit.models.mobilevit import DEFAULT_PRETRAINED_CFG, MIN_INPUT_SIZE, PretrainedMixin

# Registered names -> backbone size. COCO's 80 categories (mapped to contiguous labels 1..80, as
# ml-cvnets does) + the background.
DETECTION_MODELS: dict[str, str] = {f"ssdlite_{name}": name for name in BACKBONES}
DEFAULT_DETECTION_CLASSES = 81

FEATURE_NAMES = ("os16", "os32", "os64", "os128", "os256", "global")
PROJ_CHANNELS = (512, 256, 256, 128, 128, 64)  # ml-cvnets proj_channels, one per feature map
ASPECT_RATIOS = ([2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2])
MIN_SCALE, MAX_SCALE = 0.1, 1.05
BOX_COORDINATES = 4

# Inference and input options of ml-cvnets' SSD (conf_threshold, nms_iou_threshold, objects_per_image, top_k).
DETECTION_DEFAULTS: dict[str, Any] = {
    "score_thresh": 0.01,
    "nms_thresh": 0.5,
    "detections_per_img": 200,
    "topk_candidates": 400,
    "img_size": 320,
}


def _xavier_init(module: nn.Module) -> None:
    """ml-cvnets initialises the SSD layers (not the backbone) with Xavier-uniform convs and zero biases."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SeparableConv2d(nn.Sequential):
    """ml-cvnets' SeparableConv2d: depthwise 3x3 conv + BN (no activation), then a pointwise 1x1 conv.

    As a feature layer the pointwise conv has BN + ReLU; as a predictor it has a bias and nothing after.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, predictor: bool = False) -> None:
        super().__init__()
        self.dw_conv = ConvNormAct(in_channels, in_channels, 3, stride=stride, groups=in_channels, act=False)
        if predictor:
            self.pw_conv: nn.Module = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.pw_conv = ConvNormAct(in_channels, out_channels, 1, act_layer=nn.ReLU)


class GlobalFeature(nn.Sequential):
    """The last SSD feature map: global average pool, then a 1x1 conv (no norm, no bias) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.act = nn.ReLU()


class MobileViTSSDBackbone(nn.Module):
    """MobileViT layer4 and layer5 outputs plus the extra SSD layers: six feature maps for the heads."""

    def __init__(self, name: str, cfg: BackboneConfig) -> None:
        super().__init__()
        self.body = backbone_features(name, cfg, out_indices=(3, 4))
        in_channels = cfg.channels[-1]
        extra: list[nn.Module] = []
        for out_channels in PROJ_CHANNELS[2:-1]:
            extra.append(SeparableConv2d(in_channels, out_channels, stride=2))
            in_channels = out_channels
        extra.append(GlobalFeature(in_channels, PROJ_CHANNELS[-1]))
        self.extra = nn.ModuleList(extra)
        self.out_channels = [*self.body.feature_info.channels(), *PROJ_CHANNELS[2:]]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)  # [B, C4, H/16, W/16], [B, C5, H/32, W/32]
        x = features[-1]
        for layer in self.extra:
            x = layer(x)  # halves the side (strides 64, 128, 256), then [B, 64, 1, 1]
            features.append(x)
        return OrderedDict(zip(FEATURE_NAMES, features, strict=True))


class SSDPredictor(nn.Module):
    """ml-cvnets' SSDHead for one feature map: optional 1x1 projection, then one conv that predicts
    box offsets and class logits of every anchor together (they share the depthwise conv)."""

    def __init__(
        self, in_channels: int, proj_channels: int, num_anchors: int, num_classes: int, kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        project = kernel_size > 1 and proj_channels != in_channels
        self.proj = ConvNormAct(in_channels, proj_channels, 1, act_layer=nn.ReLU) if project else nn.Identity()
        width = proj_channels if project else in_channels
        out_channels = num_anchors * (BOX_COORDINATES + num_classes)
        if kernel_size > 1:
            self.loc_cls: nn.Module = SeparableConv2d(width, out_channels, predictor=True)
        else:
            self.loc_cls = nn.Conv2d(width, out_channels, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.loc_cls(self.proj(x))  # [B, A * (4 + K), H, W]
        # Anchor order (y, x, anchor) is DefaultBoxGenerator's: [B, H * W * A, 4 + K]
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, BOX_COORDINATES + self.num_classes)
        return x[..., :BOX_COORDINATES], x[..., BOX_COORDINATES:]


class SSDLiteMobileViTHead(nn.Module):
    """One :class:`SSDPredictor` per feature map, outputs concatenated in torchvision's head format."""

    def __init__(self, in_channels: Sequence[int], num_anchors: Sequence[int], num_classes: int) -> None:
        super().__init__()
        kernel_sizes = [3] * (len(in_channels) - 1) + [1]  # the global 1x1 map gets a 1x1 predictor
        self.predictors = nn.ModuleList(
            SSDPredictor(c, p, a, num_classes, k)
            for c, p, a, k in zip(in_channels, PROJ_CHANNELS, num_anchors, kernel_sizes, strict=True)
        )

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        boxes, logits = zip(*(p(f) for p, f in zip(self.predictors, features, strict=True)), strict=True)
        return {"bbox_regression": torch.cat(boxes, 1), "cls_logits": torch.cat(logits, 1)}  # [B, N, 4], [B, N, K]


def default_box_generator() -> DefaultBoxGenerator:
    """ml-cvnets' SSD anchors: scales linspace(0.1, 1.05, 7); scale k and sqrt(s_k s_k+1) squares,
    then s_k boxes of each aspect ratio and its inverse; centres at pixel centres; clipped to [0, 1]."""
    n = len(ASPECT_RATIOS)
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * k / n for k in range(n + 1)]
    return DefaultBoxGenerator([list(r) for r in ASPECT_RATIOS], scales=scales)


class SSDLiteMobileViT(PretrainedMixin, SSD):
    """SSDLite with a MobileViT backbone and torchvision's detection API.

    ``model(images, targets)`` in train mode returns ``{"bbox_regression", "classification"}`` losses;
    in eval mode ``model(images)`` returns one ``{"boxes", "labels", "scores"}`` dict per image, boxes
    as (x1, y1, x2, y2) in the input image's pixels. Images are [3, H, W] float RGB in [0, 1] of any
    size; ``num_classes`` includes the background (label 0), so object labels are 1..num_classes-1.
    """

    task = "detection"
    backbone_prefix = "backbone.body."
    task_pretrained_cfg: ClassVar[Mapping[str, Any]] = {
        "crop_pct": 1.0,
        "interpolation": "bilinear",  # GeneralizedRCNNTransform's resize
        "first_conv": "backbone.body.stem.conv",
        "classifier": "head.predictors",
    }
    head_defaults: ClassVar[Mapping[str, Any]] = DETECTION_DEFAULTS

    def __init__(
        self,
        name: str,
        cfg: BackboneConfig,
        num_classes: int = DEFAULT_DETECTION_CLASSES,
        *,
        score_thresh: float = DETECTION_DEFAULTS["score_thresh"],
        nms_thresh: float = DETECTION_DEFAULTS["nms_thresh"],
        detections_per_img: int = DETECTION_DEFAULTS["detections_per_img"],
        topk_candidates: int = DETECTION_DEFAULTS["topk_candidates"],
        img_size: int = DETECTION_DEFAULTS["img_size"],
    ) -> None:
        if name not in DETECTION_MODELS:
            raise ValueError(f"unknown detection model {name!r}; valid names: {', '.join(sorted(DETECTION_MODELS))}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be at least 2, got {num_classes}")
        if cfg.in_chans != 3:
            raise ValueError(f"SSDLite takes RGB images: in_chans must be 3, got {cfg.in_chans}")
        if img_size < MIN_INPUT_SIZE:
            raise ValueError(f"img_size must be at least {MIN_INPUT_SIZE}, got {img_size}")
        backbone = MobileViTSSDBackbone(DETECTION_MODELS[name], cfg)
        anchor_generator = default_box_generator()
        head = SSDLiteMobileViTHead(backbone.out_channels, anchor_generator.num_anchors_per_location(), num_classes)
        _xavier_init(backbone.extra)
        _xavier_init(head)
        super().__init__(
            backbone,
            anchor_generator,
            (img_size, img_size),
            num_classes,
            image_mean=list(DEFAULT_PRETRAINED_CFG["mean"]),
            image_std=list(DEFAULT_PRETRAINED_CFG["std"]),
            head=head,
            score_thresh=score_thresh,
            nms_thresh=nms_thresh,
            detections_per_img=detections_per_img,
            topk_candidates=topk_candidates,
        )
        self.img_size = img_size
        self._describe(name, cfg, BACKBONES[DETECTION_MODELS[name]], img_size, num_classes)

    def forward(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        _check_images(images)
        if self.training and targets is None:
            raise ValueError("training mode needs targets: one {'boxes': [N, 4], 'labels': [N]} dict per image")
        if targets is not None:
            _check_targets(targets, len(images), self.num_classes)
        return super().forward(list(images), None if targets is None else list(targets))


def _check_images(images: Sequence[torch.Tensor]) -> None:
    """Catch what torchvision would broadcast silently (1-channel images) or report as an assertion."""
    if len(images) == 0:
        raise ValueError("expected at least one image")
    for i, img in enumerate(images):
        if not isinstance(img, torch.Tensor) or img.dim() != 3 or img.shape[0] != 3:
            shape = tuple(img.shape) if isinstance(img, torch.Tensor) else type(img).__name__
            raise ValueError(
                f"image {i}: expected a [3, H, W] RGB tensor, got {shape}; convert grayscale or RGBA images "
                "to RGB and pass a list of [3, H, W] tensors (or one [B, 3, H, W] batch)"
            )
        if not img.is_floating_point():
            raise ValueError(f"image {i}: expected floating-point RGB in [0, 1], got {img.dtype}; divide by 255")


def _check_targets(targets: Sequence[dict[str, torch.Tensor]], num_images: int, num_classes: int) -> None:
    """ValueErrors for targets that torchvision would reject with an assertion or misread."""
    if len(targets) != num_images:
        raise ValueError(f"expected one target per image ({num_images}), got {len(targets)}")
    for i, target in enumerate(targets):
        boxes, labels = target.get("boxes"), target.get("labels")
        if not isinstance(boxes, torch.Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
            shape = tuple(boxes.shape) if isinstance(boxes, torch.Tensor) else type(boxes).__name__
            raise ValueError(
                f"target {i}: 'boxes' must be a float tensor of shape [N, 4] (x1, y1, x2, y2 in pixels), got {shape}"
            )
        if not isinstance(labels, torch.Tensor) or labels.shape != (boxes.shape[0],) or labels.dtype != torch.int64:
            shape = (tuple(labels.shape), labels.dtype) if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"target {i}: 'labels' must be an int64 tensor of shape [{boxes.shape[0]}], got {shape}")
        if labels.numel() and (labels.min() < 1 or labels.max() >= num_classes):
            raise ValueError(
                f"target {i}: labels must lie in 1..{num_classes - 1} (0 is the background), got "
                f"{labels.min().item()}..{labels.max().item()}; create the model with more classes or remap the labels"
            )
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
        if degenerate.any():
            raise ValueError(
                f"target {i}: box {boxes[degenerate][0].tolist()} has no area; boxes are (x1, y1, x2, y2) with "
                "x2 > x1 and y2 > y1"
            )


def ssdlite_mobilevit(variant: str, num_classes: int = DEFAULT_DETECTION_CLASSES, **kwargs: Any) -> SSDLiteMobileViT:
    """SSDLite on the MobileViT ``variant`` ("mobilevit_xxs", "mobilevit_xs" or "mobilevit_s").

    ``kwargs`` are the detection options of :data:`DETECTION_DEFAULTS` (``score_thresh``,
    ``nms_thresh``, ``detections_per_img``, ``topk_candidates``, ``img_size``) or fields of the
    backbone's :class:`~mobilevit.models.mobilevit.MobileViTConfig`.
    """
    if variant not in BACKBONES:
        raise ValueError(f"unknown backbone {variant!r}; valid variants: {', '.join(sorted(BACKBONES))}")
    unknown = sorted(set(kwargs) - set(DETECTION_DEFAULTS) - config_fields(BACKBONES[variant]))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)}; detection options: {', '.join(DETECTION_DEFAULTS)}, "
            "or a MobileViTConfig field"
        )
    options = {k: kwargs.pop(k) for k in DETECTION_DEFAULTS if k in kwargs}
    cfg = resolve_backbone_config(variant, kwargs)
    return SSDLiteMobileViT(f"ssdlite_{variant}", cfg, num_classes, **options)


# The exportable part of an SSDLite detector, and the NMS that runs after it in Python.
#
# torchvision's SSD ends in data-dependent steps (per-class score thresholds, top-k, batched NMS) whose
# output size varies per image; they do not export to a fixed graph, and runtimes implement NMS with
# different tie-breaking. So the exported graph stops at the raw predictions of every anchor:
#
# - input: [B, 3, S, S] RGB in [0, 1], already resized to the model's ``img_size`` S (the model resizes
#   internally; its evaluation resizes with antialiasing beforehand, which makes that step an identity);
# - ``boxes`` [B, A, 4]: every anchor's box, decoded with the model's box coder and anchors and clipped,
#   as (x1, y1, x2, y2) pixels of the S x S input;
# - ``scores`` [B, A, K]: softmax class probabilities (column 0 is the background).
#
# :func:`postprocess` then gives the eager model's detections: it repeats ``SSD.postprocess_detections``
# step for step (threshold, per-class top-k, :func:`torchvision.ops.batched_nms`, cap per image).

OUTPUT_NAMES = ("boxes", "scores")


class SSDRawPredictions(nn.Module):
    """``model`` from its normalisation to decoded boxes and class probabilities of every anchor,
    for a fixed input side ``model.img_size`` (the anchors are computed once, for that size)."""

    output_names = OUTPUT_NAMES
    fixed_input_size = True  # its anchors are computed for one size

    def __init__(self, model: SSD) -> None:
        super().__init__()
        self.backbone, self.head, self.box_coder = model.backbone, model.head, model.box_coder
        self.img_size = model.img_size
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1), persistent=False)
        side = self.img_size
        with torch.no_grad():
            example = torch.zeros(1, 3, side, side)
            features = list(model.backbone(example).values())
            anchors = model.anchor_generator(ImageList(example, [(side, side)]), features)[0]
        self.register_buffer("anchors", anchors, persistent=False)  # [A, 4] xyxy pixels of the S x S input

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.head(list(self.backbone((x - self.mean) / self.std).values()))
        batch = x.shape[0]
        deltas = out["bbox_regression"].reshape(-1, 4)  # [B * A, 4]
        boxes = self.box_coder.decode_single(deltas, self.anchors.repeat(batch, 1)).reshape(batch, -1, 4)
        boxes = clip_boxes_to_image(boxes, (self.img_size, self.img_size))
        return boxes, out["cls_logits"].softmax(dim=-1)  # [B, A, 4], [B, A, K]


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_thresh: float = DETECTION_DEFAULTS["score_thresh"],
    nms_thresh: float = DETECTION_DEFAULTS["nms_thresh"],
    detections_per_img: int = DETECTION_DEFAULTS["detections_per_img"],
    topk_candidates: int = DETECTION_DEFAULTS["topk_candidates"],
) -> list[dict[str, torch.Tensor]]:
    """Detections from the exported graph's ``boxes`` [B, A, 4] and ``scores`` [B, A, K]: one
    ``{"boxes", "labels", "scores"}`` dict per image, as the eager model returns for S x S inputs.

    The defaults are the models' own options; pass ``model.score_thresh`` etc. for a model built with
    others. Per object class: scores above ``score_thresh``, the ``topk_candidates`` best; then NMS per
    class at IoU ``nms_thresh`` and the ``detections_per_img`` best overall, highest score first.
    """
    options = (score_thresh, nms_thresh, detections_per_img, topk_candidates)
    return [_postprocess_image(b, s, *options) for b, s in zip(boxes, scores, strict=True)]


def _postprocess_image(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    score_thresh: float,
    nms_thresh: float,
    detections_per_img: int,
    topk_candidates: int,
) -> dict[str, torch.Tensor]:
    """One image's detections; the same operations in the same order as torchvision's SSD, so that
    ties resolve the same way."""
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(1, scores.shape[1]):
        score = scores[:, label]
        keep = score > score_thresh
        score, idx = score[keep].topk(min(topk_candidates, int(keep.sum())))
        kept_boxes.append(boxes[keep][idx])
        kept_scores.append(score)
        kept_labels.append(torch.full_like(idx, label))
    all_boxes, all_scores, all_labels = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
    keep = batched_nms(all_boxes, all_scores, all_labels, nms_thresh)[:detections_per_img]
    return {"boxes": all_boxes[keep], "labels": all_labels[keep], "scores": all_scores[keep]}
