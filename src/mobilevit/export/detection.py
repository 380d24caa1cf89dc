"""The exportable part of an SSDLite detector, and the NMS that runs after it in Python.

torchvision's SSD ends in data-dependent steps (per-class score thresholds, top-k, batched NMS) whose
output size varies per image; they do not export to a fixed graph, and runtimes implement NMS with
different tie-breaking. So the exported graph stops at the raw predictions of every anchor:

- input: [B, 3, S, S] RGB in [0, 1], already resized to the model's ``img_size`` S (the model resizes
  internally; its evaluation resizes with antialiasing beforehand, which makes that step an identity);
- ``boxes`` [B, A, 4]: every anchor's box, decoded with the model's box coder and anchors and clipped,
  as (x1, y1, x2, y2) pixels of the S x S input;
- ``scores`` [B, A, K]: softmax class probabilities (column 0 is the background).

:func:`postprocess` then gives the eager model's detections: it repeats ``SSD.postprocess_detections``
step for step (threshold, per-class top-k, :func:`torchvision.ops.batched_nms`, cap per image).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD
from torchvision.ops import batched_nms, clip_boxes_to_image

from mobilevit.models.detection import DETECTION_DEFAULTS

OUTPUT_NAMES = ("boxes", "scores")


class SSDRawPredictions(nn.Module):
    """``model`` from its normalisation to decoded boxes and class probabilities of every anchor,
    for a fixed input side ``model.img_size`` (the anchors are computed once, for that size)."""

    output_names = OUTPUT_NAMES

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
