"""The registry: one entry per model name, with its family, task, backbone config and the
published weights it can load. ``create_model``, ``list_models``, the task heads and
the CLI read models from here; a new size is a row of its family's config table, a new checkpoint
a row of :data:`~mobilevit.models.pretrained.PUBLISHED_WEIGHTS`.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass

from mobilevit.models.backbones import BACKBONE_FAMILIES, BackboneConfig, Family
from mobilevit.models.detection import DETECTION_MODELS
from mobilevit.models.pretrained import PUBLISHED_WEIGHTS, PublishedWeights
from mobilevit.models.segmentation import SEGMENTATION_MODELS


@dataclass(frozen=True)
class ModelEntry:
    name: str
    task: str
    backbone: str  # the size its backbone is built from (the name itself for a classifier)

    @property
    def family(self) -> Family:
        return BACKBONE_FAMILIES[self.backbone]

    @property
    def config(self) -> BackboneConfig:
        return self.family.configs[self.backbone]

    @property
    def weights(self) -> tuple[PublishedWeights, ...]:
        """The published weights this model loads, the default (timm's choice where timm has one) first."""
        return tuple(w for w in PUBLISHED_WEIGHTS.values() if w.model == self.name)


REGISTRY: dict[str, ModelEntry] = {
    **{name: ModelEntry(name, "classification", name) for name in BACKBONE_FAMILIES},
    **{name: ModelEntry(name, "segmentation", backbone) for name, backbone in SEGMENTATION_MODELS.items()},
    **{name: ModelEntry(name, "detection", backbone) for name, backbone in DETECTION_MODELS.items()},
}
MODEL_TASKS = tuple(dict.fromkeys(entry.task for entry in REGISTRY.values()))  # what the models do


def split_name(name: str) -> tuple[str, str | None]:
    """``"mobilevit_s.cvnets_in1k"`` -> ``("mobilevit_s", "cvnets_in1k")``; no tag -> ``(name, None)``."""
    model, _, tag = name.partition(".")
    return model, tag or None


def _suggest(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3)
    return f" Did you mean {' or '.join(close)}?" if close else ""


def get_entry(name: str) -> ModelEntry:
    """The registry entry of ``name`` (a tag, if any, is ignored); unknown names raise ValueError."""
    model, _ = split_name(name)
    if model not in REGISTRY:
        names = sorted(REGISTRY)
        raise ValueError(f"unknown model {model!r}.{_suggest(model, names)} Valid names: {', '.join(names)}")
    return REGISTRY[model]


def model_task(name: str) -> str:
    """``classification``, ``segmentation`` or ``detection``: what the registered model ``name`` does."""
    return get_entry(name).task


def get_weights(name: str) -> PublishedWeights:
    """The published weights ``name`` (``model.tag``, or a model name for its default tag) stands for."""
    entry = get_entry(name)
    _, tag = split_name(name)
    if not entry.weights:
        with_weights = sorted({w.model for w in PUBLISHED_WEIGHTS.values() if w.model.endswith(entry.backbone)})
        hint = f" Models built on {entry.backbone} with weights: {', '.join(with_weights)}." if with_weights else ""
        raise ValueError(
            f"no published weights for {entry.name}.{hint} Train it (mobilevit train), or pass pretrained=PATH "
            "to load a file; mobilevit.list_pretrained() lists every published tag."
        )
    if tag is None:
        return entry.weights[0]
    tags = [w.tag for w in entry.weights]
    if tag not in tags:
        raise ValueError(f"{entry.name} has no published weights tagged {tag!r}; valid tags: {', '.join(tags)}")
    return PUBLISHED_WEIGHTS[f"{entry.name}.{tag}"]


def list_models(pattern: str | None = None, task: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered model names, sorted, filtered by a shell-style ``pattern`` and a task. With
    ``pretrained=True``, every ``model.tag`` with published weights instead (timm's convention)."""
    if task is not None and task not in MODEL_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(MODEL_TASKS)}")
    names = sorted(PUBLISHED_WEIGHTS) if pretrained else sorted(REGISTRY)
    names = [n for n in names if task is None or model_task(n) == task]
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def list_pretrained(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Every published ``model.tag``, sorted; ``pattern`` filters as in :func:`list_models`."""
    return list_models(pattern, task, pretrained=True)
