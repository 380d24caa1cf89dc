"""Training options: one dataclass whose defaults are the paper's ImageNet recipe.

A YAML recipe (``configs/*.yaml``) overrides the defaults, and command-line flags override the
recipe; the resolved config is saved in the run directory.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mobilevit.checkpoint_io import atomic_write


@dataclass
class TrainConfig:
    model: str = "mobilevit_s"  # with --task segmentation/detection a backbone name picks its task model
    task: str | None = None  # classification | segmentation | detection; None: the model's own task
    # classification: "fashion-mnist" or an ImageFolder root with train/ and val/; segmentation: a VOC root
    # (VOCdevkit/VOC2012); detection: a COCO or VOC root; "shapes": synthetic shapes. None: the task's default.
    data: str | None = None
    splits: tuple[str, str] = ("train", "val")  # training and validation split names (COCO: train2017 val2017)
    pretrained: str | None = None  # any checkpoint create_model accepts; a new head for the data's classes
    output: str = "runs/train"
    epochs: int = 300
    batch_size: int = 128  # per process, at img_size; the multi-scale sampler scales it per size
    img_size: int = 256
    multi_scale: bool = True
    min_size: int = 160
    max_size: int = 320
    num_scales: int = 5
    size_divisor: int = 32
    crop_scale: tuple[float, float] = (0.08, 1.0)  # classification: RandomResizedCrop's area range
    scale_range: tuple[float, float] = (0.5, 2.0)  # segmentation: random rescale before the crop
    ssd_augment: bool = False  # detection: torchvision's SSD zoom-out and IoU crops
    transformer_dropout: float | None = None  # None: the model's published rate (0.05 xxs, 0.1 xs and s)
    lr: float = 0.002
    min_lr: float = 0.0002
    warmup_lr: float = 0.0002
    warmup_steps: int = 3000
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    ema: bool = True
    ema_momentum: float = 0.0005  # ema = (1 - m) ema + m w
    ema_warmup: bool = False  # momentum max(m, 1 - (1 + t) / (10 + t)) at step t: short runs need it
    amp: str = "none"  # none | bf16 | fp16 (fp16 needs a GPU)
    grad_clip: float | None = None
    accum_steps: int = 1
    channels_last: bool = False
    compile: bool = False
    workers: int = 2
    seed: int = 0
    deterministic: bool = False
    save_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0 = only at epoch ends
    keep_last: int = 3
    strict: bool = False  # stop on an unreadable image instead of skipping it
    limit_train: int | None = None  # use only the first N training images (quick runs, tests)
    limit_val: int | None = None
    resume: str | None = None  # a checkpoint path, or "auto" for the newest in output/checkpoints

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON types (tuples become lists), as saved in config.yaml and checkpoints."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _coerce(name: str, value: Any) -> Any:
    if name in ("crop_scale", "scale_range", "betas") and value is not None:
        return tuple(float(v) for v in value)
    if name == "splits":
        return tuple(str(v) for v in value)
    return value


def load_config(recipe: str | os.PathLike | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the YAML ``recipe``, then ``overrides`` (``None`` values are ignored)."""
    values: dict[str, Any] = {}
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"recipe not found: {path}")
        values.update(yaml.safe_load(path.read_text()) or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    from mobilevit.engine.tasks import get_task
    from mobilevit.models.factory import resolve_task_model

    config.model, config.task = resolve_task_model(config.model, config.task)
    config.data = config.data or get_task(config.task).default_data
    if config.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {config.amp!r}")
    if config.accum_steps < 1 or config.epochs < 1 or config.batch_size < 1:
        raise ValueError("epochs, batch_size and accum_steps must be at least 1")
    return config


def save_config(config: TrainConfig, path: Path) -> None:
    text = yaml.safe_dump(config.to_dict())
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
