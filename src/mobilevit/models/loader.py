"""One loader for every source a model can come from: what ``eval``, ``predict`` and ``export``
accept as ``--checkpoint`` / ``--model``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit.checkpoint_io import load_pickle, read_state_dict
from mobilevit.convert import convert_state_dict
from mobilevit.hub import fetch_repo, is_repo_id
from mobilevit.models.factory import create_model, from_pretrained, is_published
from mobilevit.models.registry import get_weights
from mobilevit.models.weights import load_state_dict_checked


def _strip_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``AveragedModel`` state dict as the plain model's: no ``module.`` prefix, no counter."""
    return {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}


def _num_classes(raw: dict[str, Any], state: dict[str, torch.Tensor]) -> int | None:
    """The class count of a training checkpoint: as recorded, else the classifier's rows."""
    if raw.get("num_classes"):
        return int(raw["num_classes"])
    weight = state.get("head.fc.weight", state.get("head.classifier.weight"))
    return None if weight is None else weight.shape[0]


def load_checkpoint(
    path: str | Path | None, model_name: str | None = None, weights: str = "ema"
) -> tuple[nn.Module, list[str]]:
    """A model and its class names, from a training checkpoint (``step-N.pt``: its EMA weights
    unless ``weights='model'``), a ``save_pretrained`` directory, a Hub repo id, published weights by
    name (``mobilevit_s.cvnets_in1k``; ``path=None`` takes ``model_name``'s default tag) or any
    weights file of a supported port (then ``model_name`` is needed). Classifiers, segmentation and
    detection models alike."""
    if path is None and model_name is None:
        raise ValueError("pass a checkpoint, or a model name to use its published weights")
    published = model_name if path is None else path
    if is_published(published):
        return create_model(str(published), pretrained=True), []
    if path is None:
        get_weights(model_name)  # raises: the model has no published weights, or no such tag
    if isinstance(path, str) and is_repo_id(path):
        path = fetch_repo(path)
    path = Path(path)
    if path.is_dir():
        model = from_pretrained(path)
        return model, list(model.pretrained_cfg.get("label_names", []))
    if path.suffix in (".pt", ".pth"):
        raw = load_pickle(path)
        if isinstance(raw, dict) and "model_name" in raw and "model" in raw:
            classes = list(raw.get("classes", []))
            state = _strip_ema(raw["ema"]) if weights == "ema" and raw.get("ema") else raw["model"]
            model = create_model(raw["model_name"], num_classes=_num_classes(raw, state), **raw.get("model_args", {}))
            load_state_dict_checked(model, state, context=f" ({path})")
            img_size = raw.get("config", {}).get("img_size", model.pretrained_cfg["input_size"][-1])
            model.pretrained_cfg.update(label_names=classes, input_size=(3, img_size, img_size))
            return model, classes
    if model_name is None:
        raise ValueError(f"{path} is a plain weights file: pass the model name (--model) to evaluate it")
    state = convert_state_dict(read_state_dict(path))
    return create_model(model_name, num_classes=_num_classes({}, state), pretrained=path), []
