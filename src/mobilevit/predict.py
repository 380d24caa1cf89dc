"""Classify, segment or detect in image files with a trained or published model: the engine of
``mobilevit predict``. What is predicted and written for each image is the model's task's
(:meth:`mobilevit.tasks.base.Task.predict`); this module reads the files and picks the runtime.

Images are preprocessed as the model was evaluated, so a checkpoint predicts on photos as it scored:
classifiers by their ``pretrained_cfg`` transform; segmentation and detection models see the whole
image resized to their input size (antialiased, as their evaluation resizes), not a crop, and their
masks and boxes are mapped back to the original size. A fixed input size bounds the cost of large
photos and is the size the model was trained and evaluated at.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit.data.images import readable_images
from mobilevit.export.onnx import DYNAMIC_MIN_BATCH, DYNAMIC_MIN_SIDE, OnnxRunner, export_onnx
from mobilevit.tasks import task_for
from mobilevit.tasks.base import Forward

PREDICT_BACKENDS = ("eager", "onnxruntime")


@contextmanager
def _forward(network: nn.Module, backend: str, example: torch.Tensor, dynamic: bool) -> Iterator[Forward]:
    """``network`` itself, or ONNX Runtime on its export for ``example``'s shape (``dynamic``: any
    batch and size); the file lives only while the context is open."""
    network.eval()
    if backend == "eager":
        yield network
        return
    if dynamic:  # the exporter needs a large enough example to keep the shapes free
        batch, channels, height, width = example.shape
        example = torch.zeros(
            max(batch, DYNAMIC_MIN_BATCH), channels, *(max(s, DYNAMIC_MIN_SIDE) for s in (height, width))
        )
    with tempfile.TemporaryDirectory() as tmp:
        yield OnnxRunner(export_onnx(network, Path(tmp) / "model.onnx", example, dynamic=dynamic))


def predict(
    paths: Sequence[str | os.PathLike],
    model: nn.Module,
    names: Sequence[str] | None = None,
    *,
    output_dir: str | os.PathLike = ".",
    backend: str = "eager",
    **options: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """The model's task's prediction for every readable image, and an error for every other one: one
    bad file does not stop the rest. ``names`` label the classes; by default the model's own
    (``pretrained_cfg["label_names"]``, as :func:`mobilevit.from_pretrained` restores them) or else
    those of the dataset its class count implies (ImageNet, VOC, COCO), else ``class_<i>``.
    ``options`` are the task's (``k`` for a classifier, ``score_thresh`` for a detector);
    segmentation and detection write PNGs to ``output_dir``. Both backends run the same module (a
    detector's raw predictions, then the same NMS), so they differ only by the runtime. Returns
    ``(results, errors)``, errors as ``{image, error}``."""
    if backend not in PREDICT_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(PREDICT_BACKENDS)}")
    task = task_for(model)
    task.check_predict_options(model, **options)
    labels = task.class_names(model) if names is None else list(names)
    if len(labels) != model.num_classes:
        raise ValueError(
            f"{len(labels)} class names for a model of {model.num_classes} classes: pass one name per class "
            "(the background too, for segmentation and detection), or none to use the model's own"
        )
    model.eval()
    errors: list[dict[str, str]] = []
    network, example = task.deployable(model), task.predict_example(model)
    with _forward(network, backend, example, task.predict_dynamic) as forward:
        results = task.predict(readable_images(paths, errors), model, labels, forward, output_dir, **options)
    return results, errors
