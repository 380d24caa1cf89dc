"""Object detection: COCO or VOC boxes or the built-in shapes, SSD's loss, COCO mAP through
torchmetrics with the pycocotools backend (the reference implementation), and boxes drawn on the
photo. The exported graph stops before NMS (see :class:`~mobilevit.models.detection.SSDRawPredictions`)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights
from torchvision.transforms.v2 import functional as TF
from torchvision.utils import draw_bounding_boxes

from mobilevit.data import detection as det_data
from mobilevit.data.images import WHOLE_IMAGE_INTERPOLATION, resized_input
from mobilevit.data.segmentation import VOC_PALETTE, class_colours
from mobilevit.data.synthetic import SHAPES, data_root
from mobilevit.errors import require_extra
from mobilevit.models.detection import SSDRawPredictions, postprocess
from mobilevit.tasks.base import Dataset, Forward, Images, Task

DEFAULT_SCORE_THRESH = 0.3  # what predict draws; the mAP uses the model's own low threshold
MAP_LABELS = (("mAP", "map"), ("mAP@0.5", "map_50"), ("mAP@0.75", "map_75"))
NMS_NOTE = (
    "NMS is not in the graph: it outputs boxes [B, A, 4] (x1, y1, x2, y2 pixels of the {s}x{s} input) and "
    "scores [B, A, K] of every anchor; run mobilevit.models.detection.postprocess(boxes, scores) after it"
)
PARITY_NOTE = "the max abs diff compares boxes as fractions of the {s}-pixel side, and scores"


def coco_class_names() -> list[str]:
    """The background and COCO's 80 categories as contiguous labels 1..80 (category id order, as
    ml-cvnets' SSD numbers them), from torchvision's weight metadata."""
    categories = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # indexed by COCO id, N/A for gaps
    return ["background", *(c for c in categories[1:] if c != "N/A")]


def _plain(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU tensor without a tv_tensors subclass, as torchmetrics expects."""
    return tensor.as_subclass(torch.Tensor).detach().cpu()


class DetectionMetrics:
    """COCO box mAP: torchmetrics' MeanAveragePrecision (XYXY boxes, pycocotools backend).

    ``update`` takes per image ``preds`` dicts (boxes, scores, labels) and ``targets`` dicts (boxes,
    labels and optionally iscrowd; other keys are ignored). ``compute`` returns plain floats: map,
    map_50, map_75, map_small, map_medium, map_large, mar_1, mar_10, mar_100 and mar_small,
    mar_medium, mar_large; -1.0 marks a value without ground truth to measure it (torchmetrics'
    convention, e.g. map_small when no object is small).
    """

    TARGET_KEYS = ("boxes", "labels", "iscrowd")
    PRED_KEYS = ("boxes", "scores", "labels")

    def __init__(self) -> None:
        require_extra("train", "Detection mAP", "torchmetrics", "pycocotools")
        from torchmetrics.detection import MeanAveragePrecision

        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        # The model keeps ml-cvnets' 200 boxes per image; COCO's protocol scores each image's 100 best, as
        # pycocotools does without a warning, so torchmetrics' warning about the rest is noise here.
        self.metric.warn_on_many_detections = False

    def reset(self) -> None:
        self.metric.reset()

    def update(self, preds: list[dict[str, torch.Tensor]], targets: list[dict[str, Any]]) -> None:
        self.metric.update(
            [{k: _plain(p[k]) for k in self.PRED_KEYS} for p in preds],
            [{k: _plain(t[k]) for k in self.TARGET_KEYS if k in t} for t in targets],
        )

    def compute(self) -> dict[str, float]:
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress to stdout
            result = self.metric.compute()
        return {k: float(v) for k, v in result.items() if k != "classes" and not k.endswith("_per_class")}


@torch.inference_mode()
def detect(
    image: Image.Image, forward: Forward, model: nn.Module, score_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes [N, 4] in the image's pixels, labels [N] and scores [N] above ``score_thresh``, after the
    model's own NMS options; ``forward`` runs the model's raw predictions."""
    side = model.img_size
    boxes, scores = forward(resized_input(image, (side, side))[None])
    options = (model.nms_thresh, model.detections_per_img, model.topk_candidates)
    (found,) = postprocess(boxes, scores, score_thresh, *options)
    boxes = det_data.rescale_boxes(found["boxes"], (side, side), (image.height, image.width))
    return boxes, found["labels"], found["scores"]


def draw_detections(
    image: Image.Image, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, names: list[str]
) -> Image.Image:
    """``image`` with each box in its class's palette colour, labelled with the class name and score."""
    if not len(boxes):  # draw_bounding_boxes warns on an empty set
        return image
    captions = [f"{names[i]} {s:.2f}" for i, s in zip(labels.tolist(), scores.tolist(), strict=True)]
    colours = [tuple(VOC_PALETTE[i].tolist()) for i in labels.tolist()]
    width = max(2, round(max(image.size) / 320))  # visible on large photos too
    drawn = draw_bounding_boxes(
        TF.pil_to_tensor(image), boxes, captions, colours, width=width, fill_labels=True, label_colors="white"
    )
    return TF.to_pil_image(drawn)


class Detection(Task):
    name = "detection"
    default_data = SHAPES
    metrics = ("map_50", "map")
    export_formats = ("onnx", "torchscript", "executorch", "coreml", "litert")
    # no fp16 export: decoding multiplies the head's size offsets, exponentiated, by anchor sizes of up to
    # the whole image, and turned fp16's rounding into box errors of up to 3% of the side (random weights)
    known_classes: ClassVar[Mapping[int, Callable[[], list[str]]]] = {81: coco_class_names}
    eval_needs = ("torchmetrics", "pycocotools")  # COCO mAP

    def dataset(self, data: str, split: str) -> Dataset:
        return det_data.detection_dataset(data_root(data), split)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        return det_data.DetectionDataset(dataset, cfg.ssd_augment, cfg.strict)

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        return det_data.DetectionEvalDataset(dataset, (img_size, img_size))

    def collate(self, batch: list) -> tuple[torch.Tensor, list[dict[str, Any]], int]:
        return det_data.collate_detection(batch)

    def model_options(self, cfg: Any) -> dict[str, Any]:
        return {"img_size": cfg.img_size}

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        # COCO's crowd regions are neither objects to match nor background: left out of training,
        # as torchvision's detection references do; the metric ignores detections on them.
        targets = [{"boxes": t["boxes"][t["iscrowd"] == 0], "labels": t["labels"][t["iscrowd"] == 0]} for t in targets]
        losses = model(list(images), targets)  # {"bbox_regression", "classification"}
        return sum(losses.values())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        model.eval()
        metrics = DetectionMetrics()
        for images, targets, _ in loader:
            predictions = model(list(images.to(device)))
            metrics.update([{k: v.cpu() for k, v in p.items()} for p in predictions], targets)
        return metrics.compute()

    def report(self, result: Mapping[str, Any], names: list[str], output_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """COCO mAP (IoU 0.5:0.95), mAP@0.5 and mAP@0.75, by pycocotools."""
        return dict(result), ["  ".join(f"{label} {100 * result[key]:.2f}" for label, key in MAP_LABELS)]

    def deployable(self, model: nn.Module) -> nn.Module:
        """The raw predictions of every anchor: NMS runs after the exported graph, in Python."""
        return SSDRawPredictions(model).eval()

    def predict_example(self, model: nn.Module) -> torch.Tensor:
        return torch.zeros(1, 3, model.img_size, model.img_size)

    def check_predict_options(self, model: nn.Module, *, score_thresh: float = DEFAULT_SCORE_THRESH, **_: Any) -> None:
        if not 0 <= score_thresh < 1:
            raise ValueError(f"the score threshold is a probability in [0, 1), got {score_thresh}")

    def predict(
        self,
        images: Images,
        model: nn.Module,
        names: list[str],
        forward: Forward,
        output_dir: str | os.PathLike,
        *,
        score_thresh: float = DEFAULT_SCORE_THRESH,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Detect objects and draw the boxes scoring above ``score_thresh``, labelled, to
        ``<stem>_boxes.png``: ``{image, boxes_png, detections}`` with ``{label, index, score, box}`` per
        detection (box as x1, y1, x2, y2 pixels of the image), best first."""
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for path, stem, image in images:
            boxes, labels, scores = detect(image, forward, model, score_thresh)
            boxes_png = output_dir / f"{stem}_boxes.png"
            draw_detections(image, boxes, labels, scores, names).save(boxes_png)
            detections = [
                {"label": names[i], "index": i, "score": s, "box": b}
                for b, i, s in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True)
            ]
            results.append({"image": path, "boxes_png": str(boxes_png), "detections": detections})
        return results

    def web_config(self, model: nn.Module, img_size: tuple[int, int]) -> dict[str, Any]:
        """:func:`resized_input`'s resize, the box colours of :func:`draw_detections`, and what
        :func:`detect` does after the graph: :func:`~mobilevit.models.detection.postprocess` with the
        model's options at :meth:`predict`'s score threshold, then boxes scaled to the image."""
        options = {
            "score_thresh": DEFAULT_SCORE_THRESH,
            "nms_thresh": model.nms_thresh,
            "detections_per_img": model.detections_per_img,
            "topk_candidates": model.topk_candidates,
        }
        return {
            "preprocess": {"resize": "whole", "interpolation": WHOLE_IMAGE_INTERPOLATION},
            "palette": class_colours(model.num_classes),
            "detection": options,
        }

    def format(self, result: Mapping[str, Any]) -> str:
        """A small table (class, score, box) under the path of the PNG."""
        found = result["detections"]
        lines = [result["image"], f"  boxes: {result['boxes_png']} ({len(found)} detections)"]
        width = max((len(d["label"]) for d in found), default=5)
        lines += [
            f"  {d['label']:<{width}}  {d['score']:.2f}  [{', '.join(f'{v:.1f}' for v in d['box'])}]" for d in found
        ]
        return "\n".join(lines)

    def check_export(
        self, model: nn.Module, fmt: str, img_size: tuple[int, int], dynamic: bool, int8: bool, fp16: bool = False
    ) -> None:
        super().check_export(model, fmt, img_size, dynamic, int8, fp16)
        side = model.img_size
        if dynamic:
            raise ValueError(f"a detection export has a fixed {side}x{side} input (its anchors are computed for it)")
        if tuple(img_size) != (side, side):
            raise ValueError(
                f"{model.model_name} detects on {side}x{side} inputs: export it at that size, not {img_size}"
            )

    def export_notes(self, model: nn.Module) -> list[str]:
        return [NMS_NOTE.format(s=model.img_size), PARITY_NOTE.format(s=model.img_size)]

    def comparable(self, outputs: Any, model: nn.Module) -> Any:
        """Boxes as fractions of the input side: decoding multiplies the head's offsets by anchor sizes
        of up to the whole image, which magnifies fp32 rounding for random weights; as fractions of
        the side, 1e-4 means what it does for logits."""
        boxes, scores = outputs
        return boxes / model.img_size, scores
