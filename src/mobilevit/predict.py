"""Classify, segment or detect in image files with a trained or published model: the engine of
``mobilevit predict``.

Images are preprocessed as the model was evaluated, so a checkpoint predicts on photos as it scored:
classifiers by their ``pretrained_cfg`` transform; segmentation and detection models see the whole
image resized to their input size (antialiased, as their evaluation resizes), not a crop, and their
masks and boxes are mapped back to the original size. A fixed input size bounds the cost of large
photos and is the size the model was trained and evaluated at.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF

from mobilevit.data.segmentation import VOC_PALETTE
from mobilevit.data.transforms import pretrained_transform
from mobilevit.models.factory import task_of

BACKENDS = ("eager", "onnxruntime")
BATCH_SIZE = 32  # images per forward pass: bounds memory for long file lists
DEFAULT_SCORE_THRESH = 0.3
OVERLAY_ALPHA = 0.5  # weight of the class colour in a segmentation overlay
READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
Forward = Callable[[torch.Tensor], Any]


def load_model(path: str | os.PathLike | None, model_name: str | None = None) -> tuple[nn.Module, list[str]]:
    """The model in eval mode and its class names, from a ``save_pretrained`` / timm / Hugging Face
    directory or Hub repo, a training checkpoint ``step-N.pt`` (its EMA weights), published weights
    by name (``path=None``: ``model_name``'s default tag) or a weights file of any supported port
    (which needs ``model_name``)."""
    from mobilevit.engine.evaluate import load_for_eval

    model, names = load_for_eval(path, model_name)
    return model.eval(), class_names(model, names)


def class_names(model: nn.Module, names: Sequence[str] = ()) -> list[str]:
    """``names`` (or the checkpoint's ``label_names``) when they fit the model, the classes of the
    dataset its class count implies (ImageNet's 1000, VOC's 21 or ADE20K's 150 for segmentation, COCO's 81 for
    detection), else ``class_<i>`` (``background`` first for segmentation and detection): a
    prediction always has a readable label."""
    num_classes = model.num_classes
    names = list(names or model.pretrained_cfg.get("label_names") or ())
    if len(names) == num_classes:
        return names
    task = task_of(model)
    known = _KNOWN_CLASSES.get((task, num_classes))
    if known is not None:
        return known()
    first = [] if task == "classification" else ["background"]
    return first + [f"class_{i}" for i in range(len(first), num_classes)]


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class names, from torchvision's weight metadata (nothing is downloaded)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def voc_class_names() -> list[str]:
    """Pascal VOC's background and 20 classes, in the order of its mask ids."""
    from mobilevit.data.segmentation import VOC_CLASSES

    return list(VOC_CLASSES)


def ade20k_class_names() -> list[str]:
    """ADE20K's 150 classes in the order of the published ml-cvnets segmenters' outputs."""
    from mobilevit.data.segmentation import ADE20K_CLASSES

    return list(ADE20K_CLASSES)


def coco_class_names() -> list[str]:
    """The background and COCO's 80 categories as contiguous labels 1..80 (category id order, as
    ml-cvnets' SSD numbers them), from torchvision's weight metadata."""
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

    categories = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # indexed by COCO id, N/A for gaps
    return ["background", *(c for c in categories[1:] if c != "N/A")]


_KNOWN_CLASSES: dict[tuple[str, int], Callable[[], list[str]]] = {
    ("classification", 1000): imagenet_class_names,
    ("segmentation", 21): voc_class_names,
    ("segmentation", 150): ade20k_class_names,
    ("detection", 81): coco_class_names,
}


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path``, so that a truncated file fails here rather than later."""
    with Image.open(path) as image:
        image.load()  # leaving the block closes the file only: the decoded pixels stay
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB: grayscale is repeated, transparent pixels are laid on white (their stored
    colour is often arbitrary)."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def preprocess(image: Image.Image, cfg: Mapping[str, Any]) -> torch.Tensor:
    """A [3, H, W] model input from ``image`` (any mode) as ``cfg`` (a ``pretrained_cfg``) describes."""
    return pretrained_transform(cfg)(to_rgb(image))


def top_k(logits: torch.Tensor, names: Sequence[str], k: int) -> list[list[dict[str, Any]]]:
    """The ``k`` most probable classes of each row of ``logits``: label, index and softmax probability."""
    probs, indices = logits.float().softmax(dim=1).topk(min(k, logits.shape[1]), dim=1)
    return [
        [{"label": names[i], "index": i, "prob": p} for p, i in zip(row_p.tolist(), row_i.tolist(), strict=True)]
        for row_p, row_i in zip(probs, indices, strict=True)
    ]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")


@contextmanager
def _forward(network: nn.Module, backend: str, example: torch.Tensor, dynamic: bool = False) -> Iterator[Forward]:
    """``network`` itself, or ONNX Runtime on its export for ``example``'s shape (``dynamic``: any
    batch and size); the file lives only while the context is open."""
    network.eval()
    if backend == "eager":
        yield network
        return
    from mobilevit.export.onnx import OnnxRunner, export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        yield OnnxRunner(export_onnx(network, Path(tmp) / "model.onnx", example, dynamic=dynamic))


def _classifier_example(model: nn.Module) -> torch.Tensor:
    """An input for a dynamic export: one session then serves every batch."""
    from mobilevit.export.onnx import DYNAMIC_MIN_BATCH, DYNAMIC_MIN_SIDE

    channels, height, width = model.pretrained_cfg["input_size"]
    return torch.zeros(DYNAMIC_MIN_BATCH, channels, max(height, DYNAMIC_MIN_SIDE), max(width, DYNAMIC_MIN_SIDE))


def predict_files(
    paths: Sequence[str | os.PathLike],
    model: nn.Module,
    names: Sequence[str],
    *,
    k: int = 5,
    backend: str = "eager",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Top-``k`` predictions for every readable image, and an error for every other one: one bad
    file does not stop the rest. Returns ``(results, errors)`` of ``{image, predictions}`` and
    ``{image, error}``."""
    _check_backend(backend)
    inputs, readable, errors = [], [], []
    for path in paths:
        try:
            inputs.append(preprocess(read_image(path), model.pretrained_cfg))
        except READ_ERRORS as err:
            errors.append(_read_error(path, err))
            continue
        readable.append(str(path))
    if not inputs:
        return [], errors
    with _forward(model, backend, _classifier_example(model), dynamic=True) as forward, torch.inference_mode():
        logits = torch.cat([forward(batch) for batch in torch.stack(inputs).split(BATCH_SIZE)])
    predictions = top_k(logits, names, k)
    return [{"image": p, "predictions": top} for p, top in zip(readable, predictions, strict=True)], errors


def format_table(result: Mapping[str, Any]) -> str:
    """One image's predictions as a small aligned table (rank, class, probability)."""
    width = max(5, *(len(p["label"]) for p in result["predictions"]))
    lines = [result["image"], f"  {'rank':>4}  {'class':<{width}}  {'prob':>7}"]
    lines += [
        f"  {rank:>4}  {p['label']:<{width}}  {100 * p['prob']:6.2f}%"
        for rank, p in enumerate(result["predictions"], start=1)
    ]
    return "\n".join(lines)


def _read_error(path: str | os.PathLike, err: Exception) -> dict[str, str]:
    return {"image": str(path), "error": f"cannot read {path}: {err}"}


def _readable(
    paths: Sequence[str | os.PathLike], errors: list[dict[str, str]]
) -> Iterator[tuple[str, str, Image.Image]]:
    """``(path, stem, RGB image)`` of each readable file, one at a time (a long list of photos is never
    held in memory); unreadable ones are appended to ``errors``. Stems are made unique (``x``,
    ``x_2``...) so that ``a/x.jpg`` and ``b/x.png`` do not overwrite each other's outputs."""
    seen: dict[str, int] = {}
    for path in paths:
        try:
            image = to_rgb(read_image(path))
        except READ_ERRORS as err:
            errors.append(_read_error(path, err))
            continue
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        yield str(path), stem if seen[stem] == 1 else f"{stem}_{seen[stem]}", image


def resized_input(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """[3, *size] float RGB in [0, 1]: the whole image resized, in the order the segmentation and
    detection evaluation transforms use (antialiased uint8 resize, then scaling), so predictions
    match the evaluated model."""
    resized = TF.resize(TF.pil_to_tensor(image), list(size), antialias=True)
    return TF.to_dtype(resized, torch.float32, scale=True)


def segment_files(
    paths: Sequence[str | os.PathLike],
    model: nn.Module,
    names: Sequence[str],
    output_dir: str | os.PathLike,
    *,
    backend: str = "eager",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Segment every readable image and write ``<stem>_mask.png`` (palette PNG of class ids) and
    ``<stem>_overlay.png`` (the photo, classes other than 0 tinted) to ``output_dir``. Returns
    ``(results, errors)``: ``{image, mask_png, overlay_png, classes}`` with the pixel fraction of each
    class present, and ``{image, error}`` for files that could not be read."""
    _check_backend(backend)
    if model.num_classes > len(VOC_PALETTE):
        raise ValueError(f"a mask PNG holds at most {len(VOC_PALETTE)} classes, the model has {model.num_classes}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    _, height, width = model.pretrained_cfg["input_size"]
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    with _forward(model, backend, torch.zeros(1, 3, height, width)) as forward:
        for path, stem, image in _readable(paths, errors):
            mask = segment(image, forward, (height, width))
            results.append({"image": path, **_write_segmentation(image, mask, output_dir / stem, names)})
    return results, errors


@torch.inference_mode()
def segment(image: Image.Image, forward: Forward, size: tuple[int, int]) -> torch.Tensor:
    """[H, W] int64 class ids at the image's own size: logits at the model's input ``size``,
    upsampled bilinearly to the image before the argmax (smoother than upsampling the mask)."""
    logits = forward(resized_input(image, size)[None])  # [1, K, h, w]
    logits = F.interpolate(logits, size=(image.height, image.width), mode="bilinear", align_corners=False)
    return logits[0].argmax(dim=0)


def _write_segmentation(image: Image.Image, mask: torch.Tensor, prefix: Path, names: Sequence[str]) -> dict[str, Any]:
    """Write the mask and overlay PNGs; return their paths and the classes present, largest first."""
    ids = mask.numpy().astype(np.uint8)
    mask_png, overlay_png = prefix.with_name(f"{prefix.name}_mask.png"), prefix.with_name(f"{prefix.name}_overlay.png")
    indexed = Image.fromarray(ids)
    indexed.putpalette(VOC_PALETTE.tobytes())  # "L" -> "P": the pixel values stay the class ids
    indexed.save(mask_png)
    Image.fromarray(overlay(np.asarray(image), ids)).save(overlay_png)
    counts = torch.bincount(mask.flatten(), minlength=len(names))
    present = [(i, n / mask.numel()) for i, n in enumerate(counts.tolist()) if n]
    classes = [{"label": names[i], "index": i, "fraction": f} for i, f in sorted(present, key=lambda c: -c[1])]
    return {"mask_png": str(mask_png), "overlay_png": str(overlay_png), "classes": classes}


def overlay(pixels: np.ndarray, ids: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``pixels`` [H, W, 3] uint8 blended with the palette colour of each pixel's class; class 0 (the
    background) keeps the photo's colours, so the objects stand out."""
    tinted = (1 - alpha) * pixels + alpha * VOC_PALETTE[ids]
    return np.where(ids[..., None] > 0, tinted, pixels).round().astype(np.uint8)


def detect_files(
    paths: Sequence[str | os.PathLike],
    model: nn.Module,
    names: Sequence[str],
    output_dir: str | os.PathLike,
    *,
    score_thresh: float = DEFAULT_SCORE_THRESH,
    backend: str = "eager",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Detect objects in every readable image and draw the boxes scoring above ``score_thresh``, with
    their labels, to ``<stem>_boxes.png`` in ``output_dir``. Returns ``(results, errors)``:
    ``{image, boxes_png, detections}`` with ``{label, index, score, box}`` per detection (box as
    x1, y1, x2, y2 pixels of the image), best first, and ``{image, error}`` for unreadable files.

    Both backends run the model's raw predictions (:class:`~mobilevit.export.detection.SSDRawPredictions`,
    the graph that is exported) and the same NMS after it, so they differ only by the runtime.
    """
    from mobilevit.export import deployable

    _check_backend(backend)
    if not 0 <= score_thresh < 1:
        raise ValueError(f"the score threshold is a probability in [0, 1), got {score_thresh}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    side = model.img_size
    results: list[dict[str, Any]] = []
    errors: list[dict[str, str]] = []
    with _forward(deployable(model.eval()), backend, torch.zeros(1, 3, side, side)) as forward:
        for path, stem, image in _readable(paths, errors):
            boxes, labels, scores = detect(image, forward, model, score_thresh)
            boxes_png = output_dir / f"{stem}_boxes.png"
            draw_detections(image, boxes, labels, scores, names).save(boxes_png)
            detections = [
                {"label": names[i], "index": i, "score": s, "box": b}
                for b, i, s in zip(boxes.tolist(), labels.tolist(), scores.tolist(), strict=True)
            ]
            results.append({"image": path, "boxes_png": str(boxes_png), "detections": detections})
    return results, errors


@torch.inference_mode()
def detect(
    image: Image.Image, forward: Forward, model: nn.Module, score_thresh: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Boxes [N, 4] in the image's pixels, labels [N] and scores [N] above ``score_thresh``, after the
    model's own NMS options."""
    from mobilevit.export.detection import postprocess

    side = model.img_size
    boxes, scores = forward(resized_input(image, (side, side))[None])
    options = (model.nms_thresh, model.detections_per_img, model.topk_candidates)
    (found,) = postprocess(boxes, scores, score_thresh, *options)
    scale = torch.tensor([image.width / side, image.height / side] * 2)
    return found["boxes"] * scale, found["labels"], found["scores"]


def draw_detections(
    image: Image.Image, boxes: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor, names: Sequence[str]
) -> Image.Image:
    """``image`` with each box in its class's palette colour, labelled with the class name and score."""
    from torchvision.utils import draw_bounding_boxes

    if not len(boxes):  # draw_bounding_boxes warns on an empty set
        return image
    captions = [f"{names[i]} {s:.2f}" for i, s in zip(labels.tolist(), scores.tolist(), strict=True)]
    colours = [tuple(VOC_PALETTE[i].tolist()) for i in labels.tolist()]
    width = max(2, round(max(image.size) / 320))  # visible on large photos too
    drawn = draw_bounding_boxes(
        TF.pil_to_tensor(image), boxes, captions, colours, width=width, fill_labels=True, label_colors="white"
    )
    return TF.to_pil_image(drawn)


def format_segmentation(result: Mapping[str, Any]) -> str:
    """One image's segmentation: where its PNGs are and the share of each class present."""
    lines = [result["image"], f"  mask:    {result['mask_png']}", f"  overlay: {result['overlay_png']}"]
    width = max((len(c["label"]) for c in result["classes"]), default=5)
    lines += [f"  {c['label']:<{width}}  {100 * c['fraction']:6.2f}%" for c in result["classes"]]
    return "\n".join(lines)


def format_detections(result: Mapping[str, Any]) -> str:
    """One image's detections as a small table (class, score, box) under the path of its PNG."""
    found = result["detections"]
    lines = [result["image"], f"  boxes: {result['boxes_png']} ({len(found)} detections)"]
    width = max((len(d["label"]) for d in found), default=5)
    lines += [f"  {d['label']:<{width}}  {d['score']:.2f}  [{', '.join(f'{v:.1f}' for v in d['box'])}]" for d in found]
    return "\n".join(lines)


FORMATTERS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "classification": format_table,
    "segmentation": format_segmentation,
    "detection": format_detections,
}


def predict_task(
    paths: Sequence[str | os.PathLike],
    model: nn.Module,
    names: Sequence[str],
    *,
    output_dir: str | os.PathLike,
    k: int = 5,
    score_thresh: float = DEFAULT_SCORE_THRESH,
    backend: str = "eager",
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """:func:`predict_files`, :func:`segment_files` or :func:`detect_files`, whichever the model's task
    is: one entry point for the CLI. ``k`` is the classifier's, ``score_thresh`` the detector's and
    ``output_dir`` (for PNGs) both task models'."""
    task = task_of(model)
    if task == "classification":
        return predict_files(paths, model, names, k=k, backend=backend)
    if task == "segmentation":
        return segment_files(paths, model, names, output_dir, backend=backend)
    return detect_files(paths, model, names, output_dir, score_thresh=score_thresh, backend=backend)
