"""Model registry and weight loading: ``create_model``, ``list_models``, ``from_pretrained``."""

from __future__ import annotations

import fnmatch
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit.checkpoint_io import CONFIG_FILE, read_json, read_state_dict
from mobilevit.convert import convert_state_dict
from mobilevit.errors import CheckpointError, CheckpointMismatchError
from mobilevit.models.backbones import resolve_backbone_config
from mobilevit.models.detection import DEFAULT_DETECTION_CLASSES, DETECTION_MODELS, ssdlite_mobilevit
from mobilevit.models.mobilevit import (
    MODEL_CONFIGS,
    MobileViT,
    MobileViTFeatures,
    resolve_config,
)
from mobilevit.models.mobilevitv2 import V2_CONFIGS, create_mobilevitv2
from mobilevit.models.mobilevitv3 import V3_MODELS, create_mobilevitv3
from mobilevit.models.segmentation import DEFAULT_SEGMENTATION_CLASSES, SEGMENTATION_MODELS, DeepLabV3

TASKS = ("classification", "segmentation", "detection")
_SEGMENTATION_ARGS = ("output_stride", "aspp_channels", "aspp_rates", "aspp_dropout", "dilate_local_conv")
_FEATURE_ARGS = ("output_stride",)


def task_of(model: nn.Module) -> str:
    """``classification``, ``segmentation`` or ``detection``: what the built ``model`` does
    (task models carry a ``task``; classifiers, timm's and Hugging Face's included, do not)."""
    return getattr(model, "task", "classification")


def model_task(name: str) -> str:
    """``classification``, ``segmentation`` or ``detection``: what the registered model ``name`` does."""
    if name in MODEL_CONFIGS or name in V2_CONFIGS or name in V3_MODELS:
        return "classification"
    if name in SEGMENTATION_MODELS:
        return "segmentation"
    if name in DETECTION_MODELS:
        return "detection"
    raise ValueError(f"unknown model {name!r}; valid names: {', '.join(list_models())}")


_TASK_PREFIXES = {"segmentation": "deeplabv3_", "detection": "ssdlite_"}


def resolve_task_model(name: str, task: str | None = None) -> tuple[str, str]:
    """``(model, task)`` for a model name and an optional task: a backbone name with a task picks
    that task's model (``mobilevit_s`` + segmentation -> ``deeplabv3_mobilevit_s``)."""
    own = model_task(name)
    if task is None or task == own:
        return name, own
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    candidate = _TASK_PREFIXES.get(task, "") + name
    if own == "classification" and candidate in list_models(task=task):
        return candidate, task
    raise ValueError(f"{name} is a {own} model; for {task} use one of {', '.join(list_models(task=task))}")


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Registered model names, sorted, optionally filtered by a shell-style ``pattern`` and a task."""
    names = sorted([*MODEL_CONFIGS, *V2_CONFIGS, *V3_MODELS, *SEGMENTATION_MODELS, *DETECTION_MODELS])
    if task is not None:
        names = [n for n in names if model_task(n) == task]
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def _split(options: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: options.pop(k) for k in keys if k in options}


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    source: str = "auto",
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally loading weights from ``pretrained``.

    ``pretrained`` is a checkpoint of this package, timm, Hugging Face or ml-cvnets (see
    :func:`mobilevit.checkpoint_io.read_state_dict` for the file layouts); a classification
    checkpoint initialises the backbone of a segmentation or detection model. ``num_classes`` defaults to the
    task's dataset (1000 ImageNet, 21 VOC, 81 COCO). ``overrides`` replace fields of the size's
    :class:`~mobilevit.models.mobilevit.MobileViTConfig` (e.g. ``drop_rate=0.2``) or set head options
    (``output_stride``, ``aspp_rates``, ...).
    """
    task = model_task(name)
    overrides = dict(overrides)
    model: nn.Module
    if task == "segmentation":
        head_args = _split(overrides, _SEGMENTATION_ARGS)
        cfg = resolve_backbone_config(SEGMENTATION_MODELS[name], overrides)
        model = DeepLabV3(name, cfg, num_classes or DEFAULT_SEGMENTATION_CLASSES, **head_args)
    elif task == "detection":
        model = ssdlite_mobilevit(DETECTION_MODELS[name], num_classes or DEFAULT_DETECTION_CLASSES, **overrides)
    elif name in V2_CONFIGS:
        model = create_mobilevitv2(name, num_classes, features_only, out_indices, **overrides)
    elif name in V3_MODELS:
        model = create_mobilevitv3(name, num_classes, features_only, out_indices, **overrides)
    elif features_only:
        feature_args = _split(overrides, _FEATURE_ARGS)
        model = MobileViTFeatures(name, resolve_config(name, overrides), out_indices=out_indices, **feature_args)
    else:
        model = MobileViT(
            name, resolve_config(name, overrides), num_classes=1000 if num_classes is None else num_classes
        )
    if pretrained is not None:
        load_pretrained(model, pretrained, source=source)
    return model


_BACKBONE_PREFIXES = ("backbone.body.", "backbone.")  # detection, segmentation


def _backbone_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone tensors of a classifier, segmentation or detection state dict, with the
    classifier's own keys (``stem.*``, ``stages.*``)."""
    for prefix in _BACKBONE_PREFIXES:
        if any(k.startswith(prefix + "stem.") for k in state):
            return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    return {k: v for k, v in state.items() if not k.startswith(("final_conv.", "head."))}


def _fit_classifier(
    state: dict[str, torch.Tensor], model: nn.Module
) -> tuple[dict[str, torch.Tensor], tuple[str, ...]]:
    """Fit the checkpoint's classifier to the model: a backbone ignores it, and a classifier with
    another number of classes keeps its fresh head (the start of fine-tuning) with a warning.

    Returns the state to load and the key prefixes for which the model keeps its own tensors.
    """
    if isinstance(model, MobileViTFeatures):
        return _backbone_of(state), ()
    prefix = getattr(model, "backbone_prefix", None)
    if prefix and not any(k.startswith(prefix) for k in state):
        # A classifier or another task's model: its backbone initialises ours; our head stays fresh.
        backbone = {prefix + k: v for k, v in _backbone_of(state).items()}
        return backbone, tuple(k for k in model.state_dict() if not k.startswith(prefix))
    head = model.pretrained_cfg["classifier"]
    ckpt_weight = state.get(f"{head}.weight")
    model_weight = model.state_dict().get(f"{head}.weight")
    if ckpt_weight is None or model_weight is None or ckpt_weight.shape[0] == model_weight.shape[0]:
        return state, ()
    warnings.warn(
        f"checkpoint classifier has {ckpt_weight.shape[0]} classes but the model has "
        f"{model_weight.shape[0]}: the classifier ({head}) is re-initialised and every other "
        "weight is loaded.",
        stacklevel=3,
    )
    return {k: v for k, v in state.items() if not k.startswith(head + ".")}, (head + ".",)


def load_state_dict_checked(
    model: nn.Module, state: dict[str, torch.Tensor], keep_own: tuple[str, ...] = (), context: str = ""
) -> None:
    """``load_state_dict`` that reports missing keys, unexpected keys and shape mismatches together.
    Keys under a ``keep_own`` prefix keep the model's own tensors."""
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.startswith(keep_own)]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        (k, tuple(v.shape), tuple(target[k].shape))
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context)
    model.load_state_dict({**target, **state})


def load_pretrained(model: nn.Module, path: str | os.PathLike, source: str = "auto") -> None:
    """Load weights from ``path`` (any supported format and port) into ``model`` in place."""
    state = convert_state_dict(read_state_dict(path), source)
    state, keep_own = _fit_classifier(state, model)
    name = getattr(model, "model_name", "model")
    load_state_dict_checked(model, state, keep_own, context=f" ({name} from {path})")


def _name_from_hf_config(config: dict[str, Any]) -> str:
    """Match a Hugging Face ``MobileViTConfig`` to a registered size by its channel widths, or a
    ``MobileViTV2Config`` by its width multiplier."""
    if config.get("model_type") == "mobilevitv2":
        name = f"mobilevitv2_{round(100 * config.get('width_multiplier', 1.0)):03d}"
        if name not in V2_CONFIGS:
            raise CheckpointError(f"no registered MobileViTv2 has width multiplier {config.get('width_multiplier')}")
        return name
    dims = tuple(config.get("hidden_sizes", ()))
    for name, cfg in MODEL_CONFIGS.items():
        if cfg.transformer_dims == dims:
            return name
    raise CheckpointError(f"no registered MobileViT size has transformer widths {list(dims)}")


def _hf_model(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The registered model and its options for a Hugging Face ``config.json``: a classifier, or
    DeepLabv3 for ``MobileViT(V2)ForSemanticSegmentation`` (its output stride and ASPP width)."""
    name = _name_from_hf_config(config)
    if not any("SemanticSegmentation" in a for a in config.get("architectures", [])):
        return name, {}
    options = {"output_stride": config.get("output_stride", 32), "aspp_rates": tuple(config.get("atrous_rates", ()))}
    if "aspp_out_channels" in config:
        options["aspp_channels"] = config["aspp_out_channels"]
    if config.get("model_type") == "mobilevitv2":
        options["dilate_local_conv"] = False  # HF's layout of the same weights, see DeepLabV3
    return f"deeplabv3_{name}", {k: v for k, v in options.items() if v != ()}


def from_pretrained(path: str | os.PathLike, **kwargs: Any) -> nn.Module:
    """Rebuild a model from a directory written by ``save_pretrained`` (or by timm / Hugging Face:
    v1 and v2 classifiers and their DeepLabv3 segmenters)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} is not a model directory; for a single weights file use create_model(name, pretrained=path)."
        )
    config = read_json(path / CONFIG_FILE)
    if "architecture" in config:
        name = config["architecture"]
        num_classes = config.get("num_classes", 1000)
        model_args = config.get("model_args", {})
        if config.get("features_only"):
            model_args = {**model_args, "features_only": True, "out_indices": tuple(config["out_indices"])}
    elif config.get("model_type") in ("mobilevit", "mobilevitv2"):
        name, model_args = _hf_model(config)
        num_classes = len(config.get("id2label", {})) or config.get("num_labels", 1000)
    else:
        raise CheckpointError(
            f"{path / CONFIG_FILE} names no architecture: expected a directory from save_pretrained(), "
            "timm or Hugging Face MobileViT."
        )
    options = {"num_classes": num_classes, **model_args, **kwargs}
    model = create_model(name, pretrained=path, **options)
    saved_cfg = config.get("pretrained_cfg", {}) if "architecture" in config else {}
    model.pretrained_cfg.update(
        {k: tuple(v) if k in ("input_size", "mean", "std") else v for k, v in saved_cfg.items()}
    )
    return model
