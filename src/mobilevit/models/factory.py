"""The two ways to load a model: :func:`create_model` (a registered architecture by name, with fresh,
published or any port's weights) and :func:`from_pretrained` (whatever describes its own model: a
``save_pretrained``, timm or Hugging Face directory, a Hub repo, a ``mobilevit train`` checkpoint).
What the names mean lives in ``registry.py`` and ``pretrained.py``."""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit.checkpoint_io import CONFIG_FILE, PICKLE_SUFFIXES, load_pickle, read_json, read_state_dict
from mobilevit.convert import convert_state_dict
from mobilevit.errors import CheckpointError
from mobilevit.hub import fetch_first, fetch_repo, is_repo_id
from mobilevit.models.backbones import backbone_features, resolve_backbone_config
from mobilevit.models.detection import DEFAULT_DETECTION_CLASSES, ssdlite_mobilevit
from mobilevit.models.mobilevit import MODEL_CONFIGS, MobileViTFeatures
from mobilevit.models.mobilevitv2 import V2_CONFIGS
from mobilevit.models.pretrained import PUBLISHED_WEIGHTS, Copy, PublishedWeights
from mobilevit.models.registry import MODEL_TASKS, REGISTRY, get_entry, get_weights, list_models, split_name
from mobilevit.models.segmentation import DEFAULT_SEGMENTATION_CLASSES, SEGMENTATION_DEFAULTS, DeepLabV3
from mobilevit.models.weights import load_state_dict_checked

_FEATURE_ARGS = ("output_stride", "dilate_local_conv")
TRAINED_WEIGHTS = ("ema", "model")  # what a training checkpoint holds: the EMA and the trained weights


def task_of(model: nn.Module) -> str:
    """``classification``, ``segmentation`` or ``detection``: what the built ``model`` does
    (task models carry a ``task``; classifiers, timm's and Hugging Face's included, do not)."""
    return getattr(model, "task", "classification")


def resolve_task_model(name: str, task: str | None = None) -> tuple[str, str]:
    """``(model, task)`` for a model name and an optional task: a backbone name with a task picks
    that task's model (``mobilevit_s`` + segmentation -> ``deeplabv3_mobilevit_s``)."""
    entry = get_entry(name)
    if task is None or task == entry.task:
        return name, entry.task
    if task not in MODEL_TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(MODEL_TASKS)}")
    candidates = [n for n in list_models(task=task) if get_entry(n).backbone == entry.name]
    if entry.task == "classification" and candidates:
        return candidates[0], task
    raise ValueError(f"{name} is a {entry.task} model; for {task} use one of {', '.join(list_models(task=task))}")


def _split(options: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    return {k: options.pop(k) for k in keys if k in options}


def _build(
    name: str,
    num_classes: int | None,
    features_only: bool,
    out_indices: tuple[int, ...],
    **overrides: Any,
) -> nn.Module:
    """The registered model ``name`` with fresh weights; ``overrides`` replace config fields or set
    head options."""
    entry = get_entry(name)
    overrides = dict(overrides)
    if entry.task == "segmentation":
        head_args = _split(overrides, tuple(SEGMENTATION_DEFAULTS))
        cfg = resolve_backbone_config(entry.backbone, overrides)
        return DeepLabV3(entry.name, cfg, num_classes or DEFAULT_SEGMENTATION_CLASSES, **head_args)
    if entry.task == "detection":
        return ssdlite_mobilevit(entry.backbone, num_classes or DEFAULT_DETECTION_CLASSES, **overrides)
    if features_only:
        feature_args = _split(overrides, _FEATURE_ARGS)
        return backbone_features(
            entry.name, resolve_backbone_config(entry.name, overrides), out_indices, **feature_args
        )
    cfg = resolve_backbone_config(entry.name, overrides)
    return entry.family.classifier(entry.name, cfg, 1000 if num_classes is None else num_classes)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: bool | str | os.PathLike | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3, 4),
    source: str = "auto",
    host: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally with weights, as ``timm.create_model`` does.

    ``name`` is a model (``mobilevit_s``) or a model and a tag of its published weights
    (``mobilevit_s.cvnets_in1k``, see :func:`list_pretrained`). ``pretrained=True`` downloads and
    loads the tag's weights (the model's default tag without one), from ``host`` (``"timm"``,
    ``"hf"``, ``"cvnets"``, ...) or else from the first copy that can be fetched; so does
    ``pretrained="model.tag"``, which may name another model's weights (a classifier's initialise the
    backbone of a segmentation or detection model). ``pretrained`` may also be a checkpoint file or
    directory of this package, timm, Hugging Face or ml-cvnets, or a Hub repo id (see
    :func:`mobilevit.checkpoint_io.read_state_dict`; ``source`` names its port when it cannot be
    detected). ``num_classes`` defaults to the weights' (their classifier's rows) or else the task's
    dataset (1000 ImageNet, 21 VOC, 81 COCO); another count keeps a fresh classifier (fine-tuning,
    with a warning). ``overrides`` replace fields of the size's config (e.g. ``drop_rate=0.2``) or
    set head options (``output_stride``, ``aspp_rates``, ...).
    """
    model_name, tag = split_name(name)
    get_entry(model_name)
    weights = get_weights(name) if tag is not None or pretrained is True else None
    loaded = None
    if pretrained is not None and pretrained is not False:
        loaded = _read_weights(weights if pretrained is True else pretrained, source, host, progress)
        if loaded.weights is not None and loaded.weights.model == model_name:
            weights = loaded.weights  # the model's own published weights: built as they were trained
    options = dict(weights.model_args) if weights is not None else {}
    if loaded is not None and loaded.copy is not None and loaded.weights is weights:
        options |= loaded.copy.model_args  # how this copy's port built the same weights
    if num_classes is None and weights is not None:
        num_classes = weights.num_classes
    model = _build(model_name, num_classes, features_only, out_indices, **(options | overrides))
    if weights is not None:
        model.pretrained_cfg.update(
            {k: v for k, v in weights.pretrained_cfg().items() if k != "num_classes"}  # a new head keeps its own
        )
    if loaded is not None:
        if num_classes is None:
            _adopt_class_count(model, loaded.state)
        _load(model, loaded.state, loaded.context)
        if loaded.copy is not None and loaded.weights is weights:
            model.pretrained_cfg["source"] = loaded.copy.remote.address
    return model


def _pick_copies(weights: PublishedWeights, host: str | None) -> tuple[Copy, ...]:
    if host is None:
        return weights.copies
    copies = tuple(c for c in weights.copies if c.host == host)
    if not copies:
        raise ValueError(f"{weights.name} is not published on {host!r}; its hosts: {', '.join(weights.hosts)}")
    return copies


def is_published(name: str | os.PathLike) -> bool:
    """Whether ``name`` names published weights (``mobilevit_s.cvnets_in1k``, or a model with a
    default tag) rather than a local file."""
    if not isinstance(name, str) or Path(name).exists():
        return False
    model, tag = split_name(name)
    if tag is not None:
        return name in PUBLISHED_WEIGHTS
    return model in REGISTRY and bool(REGISTRY[model].weights)


def _fetch_published(weights: PublishedWeights, host: str | None, progress: bool) -> tuple[Copy, Path]:
    """The copy of ``weights`` that could be fetched (``host``'s, or the first that can) and its file."""
    copies = _pick_copies(weights, host)
    remote, path = fetch_first(tuple(c.remote for c in copies), progress)
    return next(c for c in copies if c.remote == remote), path


@dataclass(frozen=True)
class _Loaded:
    """Weights read for a model, with this package's keys: what ``pretrained=`` named."""

    state: dict[str, torch.Tensor]
    context: str  # where they came from, for error messages
    weights: PublishedWeights | None = None  # published weights: which ones, and the copy fetched
    copy: Copy | None = None


def _read_weights(
    pretrained: PublishedWeights | str | os.PathLike, source: str, host: str | None, progress: bool
) -> _Loaded:
    """Published weights (by name or row: the first copy that can be fetched), a Hub repo, or a
    file or directory of any supported port, converted to this package's keys."""
    if isinstance(pretrained, str) and is_published(pretrained):
        pretrained = get_weights(pretrained)
    if isinstance(pretrained, PublishedWeights):
        copy, path = _fetch_published(pretrained, host, progress)
        state = convert_state_dict(read_state_dict(path), copy.layout, bgr=copy.bgr)
        return _Loaded(state, f"{pretrained.name} from {copy.remote.address}", pretrained, copy)
    if isinstance(pretrained, str) and is_repo_id(pretrained):
        pretrained = fetch_repo(pretrained)
    return _Loaded(convert_state_dict(read_state_dict(pretrained), source), f"from {pretrained}")


def _adopt_class_count(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A model built without ``num_classes`` takes the class count of the checkpoint's own
    classifier, if it holds one (a classifier's weights in a segmenter do not)."""
    weight = state.get(f"{model.pretrained_cfg['classifier']}.weight")
    if weight is not None and hasattr(model, "reset_classifier") and weight.shape[0] != model.num_classes:
        model.reset_classifier(weight.shape[0])


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
        stacklevel=4,  # create_model's caller
    )
    return {k: v for k, v in state.items() if not k.startswith(head + ".")}, (head + ".",)


def _load(model: nn.Module, state: dict[str, torch.Tensor], context: str) -> None:
    """Load ``state`` (this package's keys) into ``model``, fitted by :func:`_fit_classifier`."""
    state, keep_own = _fit_classifier(state, model)
    load_state_dict_checked(model, state, keep_own, context=f" ({getattr(model, 'model_name', 'model')}: {context})")


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


# What timm's config.json records in model_args besides our config fields, and the value we build.
_TIMM_ARGS = {"num_classes": None, "in_chans": 3, "global_pool": "avg"}


def _without_timm_args(model_args: dict[str, Any], path: Path) -> dict[str, Any]:
    for key, ours in _TIMM_ARGS.items():
        if ours is not None and model_args.get(key, ours) != ours:
            raise CheckpointError(f"{path / CONFIG_FILE}: {key}={model_args[key]!r} is not supported (only {ours!r})")
    return {k: v for k, v in model_args.items() if k not in _TIMM_ARGS}


def _strip_ema(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An ``AveragedModel`` state dict as the plain model's: no ``module.`` prefix, no counter."""
    return {k.removeprefix("module."): v for k, v in state.items() if k != "n_averaged"}


def _training_checkpoint(path: Path) -> dict[str, Any] | None:
    """The contents of a checkpoint written by ``mobilevit train`` (``step-N.pt``), or None for any
    other file."""
    if path.suffix not in PICKLE_SUFFIXES:
        return None
    raw = load_pickle(path)
    return raw if isinstance(raw, dict) and "model_name" in raw and "model" in raw else None


def describes_model(source: str | os.PathLike) -> bool:
    """Whether :func:`from_pretrained` can rebuild the model from ``source`` alone (a model
    directory, a Hub repo id, a training checkpoint) rather than a plain weights file, which needs
    ``create_model(name, pretrained=source)``."""
    if isinstance(source, str) and is_repo_id(source):
        return True
    path = Path(source)
    return path.is_dir() or (path.is_file() and _training_checkpoint(path) is not None)


def _from_training_checkpoint(path: Path, raw: dict[str, Any], weights: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model of a training checkpoint with its ``weights`` (``ema`` when it has them), class names
    and training input size."""
    if weights not in TRAINED_WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(TRAINED_WEIGHTS)}, got {weights!r}")
    state = _strip_ema(raw["ema"]) if weights == "ema" and raw.get("ema") else raw["model"]
    options = {"num_classes": raw.get("num_classes") or None, **raw.get("model_args", {}), **kwargs}
    model = create_model(raw["model_name"], **options)
    if options["num_classes"] is None:
        _adopt_class_count(model, state)
    _load(model, state, f"from {path}")
    img_size = raw.get("config", {}).get("img_size", model.pretrained_cfg["input_size"][-1])
    model.pretrained_cfg.update(label_names=list(raw.get("classes", [])), input_size=(3, img_size, img_size))
    return model


def _from_directory(path: Path, kwargs: dict[str, Any]) -> nn.Module:
    """The model of a ``save_pretrained``, timm or Hugging Face directory, its ``config.json`` read."""
    config = read_json(path / CONFIG_FILE)
    if "architecture" in config:
        name = config["architecture"]
        num_classes = config.get("num_classes", 1000)
        model_args = config.get("model_args", {})
        if "num_features" in config:  # written by timm
            model_args = _without_timm_args(model_args, path)
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


def from_pretrained(source: str | os.PathLike, *, weights: str = "ema", **kwargs: Any) -> nn.Module:
    """Rebuild the model that ``source`` describes, with its weights, class names and input size:

    - a directory written by ``save_pretrained`` (``mobilevit train`` writes ``OUTPUT/model``) or by
      timm / Hugging Face (v1 and v2 classifiers and their DeepLabv3 segmenters);
    - such a Hub repo (``apple/mobilevit-small``, ``timm/mobilevit_xxs.cvnets_in1k``), downloaded
      through huggingface_hub;
    - a training checkpoint (``OUTPUT/checkpoints/step-N.pt``): its EMA weights, or the trained ones
      with ``weights="model"`` (or when it has no EMA).

    ``kwargs`` go to :func:`create_model` (e.g. ``num_classes`` for a new head). Published weights by
    name and plain weights files, which do not say their model, load with ``create_model``.
    """
    if isinstance(source, str) and is_repo_id(source):
        source = fetch_repo(source)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}. Check the path, or download the weights first.")
    if path.is_dir():
        return _from_directory(path, kwargs)
    raw = _training_checkpoint(path)
    if raw is None:
        raise CheckpointError(
            f"{path} is a plain weights file: it does not say which model it holds. Load it with "
            "create_model(NAME, pretrained=path) (on the command line: --model NAME)."
        )
    return _from_training_checkpoint(path, raw, weights, kwargs)
