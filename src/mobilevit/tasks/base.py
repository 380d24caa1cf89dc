"""What a task is. One :class:`Task` object per task owns everything that differs between
classification, segmentation and detection: its data and batch layout, loss, metrics and evaluation
report, class names, prediction and its output files, and the export formats it supports. The
training loop, the CLI, ``predict`` and ``export`` ask the task and keep no per-task tables.

Every training dataset is indexed by the multi-scale sampler's ``(height, width, index)`` and every
collate function returns ``(images [B, 3, h, w], targets, skipped)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from mobilevit.errors import require_extra

Dataset = torch.utils.data.Dataset
Forward = Callable[[torch.Tensor], Any]  # the model, or its exported file in a runtime
Images = Iterable[tuple[str, str, Image.Image]]  # (path, unique stem, RGB image), see data.images


def to_device(targets: Any, device: torch.device) -> Any:
    """Tensors, or lists of target dicts (detection), moved to ``device`` without waiting for the copy
    (a blocking copy to a GPU would stall the host until the GPU catches up)."""
    if isinstance(targets, torch.Tensor):
        return targets.to(device, non_blocking=True)
    return [
        {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in t.items()}
        for t in targets
    ]


class Task:
    """One task. ``metrics`` are logged per epoch as ``val_<name>``; the first is the headline figure.
    ``known_classes`` maps a class count to the class names of the dataset it implies (for models
    saved without names). Subclasses implement the data, loss, evaluation and prediction."""

    name: ClassVar[str]
    default_data: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    export_formats: ClassVar[tuple[str, ...]]
    int8_export: ClassVar[bool] = False
    fp16_export: ClassVar[bool] = False
    known_classes: ClassVar[Mapping[int, Callable[[], list[str]]]] = {}
    first_class: ClassVar[str | None] = "background"  # the name of class 0 when names are made up
    predict_dynamic: ClassVar[bool] = False
    eval_needs: ClassVar[tuple[str, ...]] = ()  # modules of the [train] extra that the evaluation report uses

    # data
    def dataset(self, data: str, split: str) -> Dataset:
        """The ``split`` ("train" or "val") of ``data``; its ``classes`` attribute names the classes."""
        raise NotImplementedError

    def datasets(self, data: str, splits: tuple[str, str] = ("train", "val")) -> tuple[Dataset, Dataset, list[str]]:
        train = self.dataset(data, splits[0])
        return train, self.dataset(data, splits[1]), list(train.classes)

    def train_dataset(self, dataset: Dataset, cfg: Any, num_classes: int) -> Dataset:
        raise NotImplementedError

    def val_dataset(self, dataset: Dataset, img_size: int, num_classes: int) -> Dataset:
        raise NotImplementedError

    def eval_dataset(self, dataset: Dataset, model: nn.Module, img_size: int) -> Dataset:
        """The evaluation of a finished ``model``: as during training unless the task says otherwise."""
        return self.val_dataset(dataset, img_size, model.num_classes)

    def collate(self, batch: list) -> tuple[torch.Tensor, Any, int]:
        raise NotImplementedError

    # training and evaluation
    def model_options(self, cfg: Any) -> dict[str, Any]:
        """Options of ``create_model`` that the training config decides."""
        return {}

    def loss(self, model: nn.Module, images: torch.Tensor, targets: Any, label_smoothing: float) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, num_classes: int, device: torch.device) -> dict[str, Any]:
        raise NotImplementedError

    def check_eval(self) -> None:
        """An ImportError naming ``pip install 'mobilevit[train]'`` when the report cannot be made: before
        the evaluation runs, not after."""
        require_extra("train", f"{self.name.capitalize()} evaluation", *self.eval_needs)

    def report(self, result: Mapping[str, Any], names: list[str], output_dir: Path) -> tuple[dict[str, Any], list[str]]:
        """What ``mobilevit eval`` shows of ``result``: a JSON-ready summary and the lines to print.
        Figures, if any, are written to ``output_dir``."""
        raise NotImplementedError

    # class names
    def class_names(self, model: nn.Module) -> list[str]:
        """The model's ``label_names`` when they fit it, else the classes of the dataset its class
        count implies (``known_classes``), else ``class_<i>``: a prediction always has a readable label."""
        num_classes = model.num_classes
        names = list(model.pretrained_cfg.get("label_names") or ())
        if len(names) == num_classes:
            return names
        if num_classes in self.known_classes:
            return self.known_classes[num_classes]()
        first = [self.first_class] if self.first_class else []
        return first + [f"class_{i}" for i in range(len(first), num_classes)]

    # prediction
    def deployable(self, model: nn.Module) -> nn.Module:
        """The module that is exported and run by other runtimes for ``model``."""
        return model

    def predict_example(self, model: nn.Module) -> torch.Tensor:
        """An input for exporting :meth:`deployable` to predict with another runtime; the export has
        dynamic shapes when ``predict_dynamic``."""
        _, height, width = model.pretrained_cfg["input_size"]
        return torch.zeros(1, 3, height, width)

    def predict(
        self,
        images: Images,
        model: nn.Module,
        names: list[str],
        forward: Forward,
        output_dir: str | os.PathLike,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """One result per image; ``forward`` runs :meth:`deployable` (eager or exported)."""
        raise NotImplementedError

    def check_predict_options(self, model: nn.Module, **options: Any) -> None:
        """ValueErrors for options this task cannot predict with, before any work is done."""

    def format(self, result: Mapping[str, Any]) -> str:
        """One image's result as text for the terminal."""
        raise NotImplementedError

    def web_config(self, model: nn.Module, img_size: tuple[int, int]) -> dict[str, Any]:
        """What the browser page (:mod:`mobilevit.export.web`) must know, beside the exported file of
        ``img_size`` inputs, to predict as :meth:`predict` does: ``preprocess`` and the task's constants.
        Written into the page's config.json, so that these numbers have one source, this one."""
        raise NotImplementedError

    # export
    def check_export(
        self, model: nn.Module, fmt: str, img_size: tuple[int, int], dynamic: bool, int8: bool, fp16: bool = False
    ) -> None:
        """ValueErrors for what this task's model cannot be exported as."""
        if fmt not in self.export_formats:
            raise ValueError(f"{fmt} export does not support {self.name} models; use {', '.join(self.export_formats)}")
        if int8 and not self.int8_export:
            raise ValueError(f"int8 export is for classifiers only; export the {self.name} model in fp32")
        if fp16 and not self.fp16_export:
            raise ValueError(
                f"fp16 export is for classifiers and segmentation models; export the {self.name} model in fp32"
            )

    def export_notes(self, model: nn.Module) -> list[str]:
        """What a user of the exported file must know."""
        return []

    def comparable(self, outputs: Any, model: nn.Module) -> Any:
        """The outputs of :meth:`deployable` as the export's parity check compares them."""
        return outputs
