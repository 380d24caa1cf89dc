"""Training options: one dataclass whose defaults follow the paper's recipe and scale with the run.

The paper's ImageNet recipe (``configs/imagenet_*.yaml``) is 300 epochs and about 375k steps at 256x256.
The defaults keep its optimizer, schedule and augmentation, but the settings that only make sense
at that scale are derived from the run instead (``resolve_config``):

* the multi-scale range is 160/256 to 320/256 of ``img_size`` (the paper's 160-320 at 256), and its
  rounding step 1/8 of it (32 at 256), unless ``min_size``/``max_size``/``size_divisor`` are given;
* the warm-up lasts at most ``warmup_max_fraction`` of the run's steps (the trainer logs it when it
  shortens ``warmup_steps``);
* the EMA warms up (``ema_warmup``), so that a short run's average is not its initialisation;
* with ``pretrained`` and no explicit value, ``FINE_TUNE_DEFAULTS`` replace the from-scratch
  learning rates and warm-up;
* once the data is read (``choose_for_data``), the batch size follows the number of training images,
  the learning rate follows the batch, and the multi-scale sampler is on only at larger sizes.

A YAML recipe (``configs/*.yaml``) overrides the defaults, and command-line flags override the
recipe; the resolved config is saved in the run directory.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from mobilevit.checkpoint_io import atomic_write
from mobilevit.models.factory import resolve_task_model
from mobilevit.models.mobilevit import MIN_INPUT_SIZE
from mobilevit.tasks import get_task


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
    batch_size: int | None = None  # per process, at img_size (the sampler scales it per size); None: auto_batch_size
    img_size: int = 256
    multi_scale: bool | None = None  # None: auto_multi_scale (on only for runs like the paper's)
    min_size: int | None = None  # None: img_size * 160/256 (the paper's ratio), at least the model's 32
    max_size: int | None = None  # None: img_size * 320/256
    num_scales: int = 5
    size_divisor: int | None = None  # None: img_size / 8 as a power of two in [8, 32] (32 at 256)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # classification: RandomResizedCrop's area range
    random_erasing: float = 0.0  # classification: probability of random erasing (timm's --reprob); 0: off
    scale_range: tuple[float, float] = (0.5, 2.0)  # segmentation: random rescale before the crop
    ssd_augment: bool = False  # detection: torchvision's SSD zoom-out and IoU crops
    transformer_dropout: float | None = None  # None: the model's published rate (0.05 xxs, 0.1 xs and s)
    lr: float | None = None  # None: scaled_lr of the global batch (with pretrained: FINE_TUNE_DEFAULTS)
    min_lr: float = 0.0002
    warmup_lr: float = 0.0002
    warmup_steps: int = 3000
    warmup_max_fraction: float | None = 0.1  # the warm-up takes at most this share of the run; None: no cap
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    label_smoothing: float = 0.1
    ema: bool = True
    ema_momentum: float = 0.0005  # ema = (1 - m) ema + m w
    ema_warmup: bool = True  # momentum max(m, 1 - (1 + t) / (10 + t)) at step t (timm's ModelEmaV3 warm-up)
    amp: str = "none"  # none | bf16 | fp16 (fp16 needs a GPU)
    grad_clip: float | None = None
    accum_steps: int = 1
    channels_last: bool = False
    compile: bool = False
    workers: int | None = None  # DataLoader workers; None: 0 for data held in memory, else DEFAULT_WORKERS
    threads: int | None = None  # compute threads on CPU; None: the cores other processes leave free (ThreadGovernor)
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


# Paper's multi-scale range at its base size: 160..320 around 256, sizes rounded to multiples of 32.
PAPER_BASE_SIZE, PAPER_MIN_SIZE, PAPER_MAX_SIZE, PAPER_SIZE_DIVISOR = 256, 160, 320, 32

# Defaults that replace the from-scratch ones when ``pretrained`` is set and the option is not given:
# the paper's own fine-tuning recipes (ml-cvnets' DeepLabv3 and SSDLite from ImageNet weights, batch
# 128: configs/voc_*.yaml, configs/coco_*.yaml), lr 0.0009 (under half the from-scratch 0.002, so the
# pretrained features are adjusted rather than overwritten) after a 500-step warm-up from a tenth of
# it (the new head starts at random), then cosine down to almost nothing. The warm-up cap applies.
# A briefly trained, same-domain backbone has little to lose to a higher lr (docs/training.md, "Fine-tuning").
FINE_TUNE_DEFAULTS: dict[str, Any] = {"lr": 0.0009, "min_lr": 0.000001, "warmup_lr": 0.00009, "warmup_steps": 500}


# Defaults chosen from the data when not given (docs/training.md, "Defaults that suit the data";
# measured by benchmarks/small_data.py). The ImageNet, VOC and COCO recipes set all of them.
AUTO_BATCH_RANGE = (16, 128)  # powers of two; 128 is the paper's batch per GPU
MIN_STEPS_PER_EPOCH = 40  # a short run on a few thousand images still makes hundreds of steps
LR_BASE, LR_BASE_BATCH = 0.002, 32  # timm's lr_base and lr_base_size: lr = LR_BASE * sqrt(batch / LR_BASE_BATCH)
LR_MAX = 0.004  # reached at batch 128; the Fashion-MNIST recipe's rate (the paper's recipes set 0.002 at 1024)
# Multi-scale by default only in runs like the paper's (256x256, 300 epochs), where it reports a gain;
# every shorter or smaller run measured here lost accuracy to it (docs/training.md).
MULTI_SCALE_MIN_SIZE, MULTI_SCALE_MIN_EPOCHS = 128, 100
DEFAULT_WORKERS = 2


def auto_batch_size(num_samples: int, world_size: int = 1) -> int:
    """The largest power of two in :data:`AUTO_BATCH_RANGE` that still gives an epoch of
    ``num_samples`` at least :data:`MIN_STEPS_PER_EPOCH` optimizer steps (the smallest one if none does)."""
    batch, smallest = AUTO_BATCH_RANGE[1], AUTO_BATCH_RANGE[0]
    while batch > smallest and num_samples / (batch * world_size) < MIN_STEPS_PER_EPOCH:
        batch //= 2
    return batch


def scaled_lr(global_batch: int) -> float:
    """timm's ``lr_base`` rule with its square-root scaling for adaptive optimizers such as AdamW, at
    most :data:`LR_MAX`."""
    return min(LR_MAX, LR_BASE * math.sqrt(global_batch / LR_BASE_BATCH))


def auto_multi_scale(img_size: int, epochs: int) -> bool:
    """On for runs at least :data:`MULTI_SCALE_MIN_SIZE` pixels and :data:`MULTI_SCALE_MIN_EPOCHS` long."""
    return img_size >= MULTI_SCALE_MIN_SIZE and epochs >= MULTI_SCALE_MIN_EPOCHS


def choose_for_data(cfg: TrainConfig, num_samples: int, world_size: int = 1, in_memory: bool = False) -> list[str]:
    """Fill in ``batch_size``, ``lr``, ``multi_scale`` and ``workers`` where they are None, from the
    number of training images and processes and whether the data is held in memory; one line per
    choice says what was chosen and why."""
    reasons = []
    if cfg.batch_size is None:
        cfg.batch_size = auto_batch_size(num_samples, world_size)
        steps = num_samples // (cfg.batch_size * world_size)
        reasons.append(
            f"batch_size {cfg.batch_size}: the largest power of two in {list(AUTO_BATCH_RANGE)} that gives "
            f"{num_samples} training images at least {MIN_STEPS_PER_EPOCH} steps per epoch ({steps})"
        )
    if cfg.lr is None:
        global_batch = cfg.batch_size * world_size * cfg.accum_steps
        cfg.lr = round(scaled_lr(global_batch), 6)
        reasons.append(
            f"lr {cfg.lr:g}: {LR_BASE:g} x sqrt(global batch {global_batch} / {LR_BASE_BATCH}), at most {LR_MAX:g}"
        )
    if cfg.multi_scale is None:
        cfg.multi_scale = auto_multi_scale(cfg.img_size, cfg.epochs)
        reasons.append(
            f"multi_scale {'on' if cfg.multi_scale else 'off'}: on by default from img_size {MULTI_SCALE_MIN_SIZE} "
            f"and {MULTI_SCALE_MIN_EPOCHS} epochs (this run: {cfg.img_size}, {cfg.epochs})"
        )
    if cfg.workers is None:
        cfg.workers = 0 if in_memory else DEFAULT_WORKERS
        reason = "the batches are made in memory" if in_memory else "the default for data read from files"
        reasons.append(f"workers {cfg.workers}: {reason}")
    return reasons


def multi_scale_range(cfg: TrainConfig) -> tuple[int, int, int]:
    """``(min_size, max_size, size_divisor)``: the configured values, or those derived from ``img_size``."""
    ratio = cfg.img_size / PAPER_BASE_SIZE
    min_size = cfg.min_size if cfg.min_size is not None else max(MIN_INPUT_SIZE, round(PAPER_MIN_SIZE * ratio))
    max_size = cfg.max_size if cfg.max_size is not None else max(min_size, round(PAPER_MAX_SIZE * ratio))
    divisor = cfg.size_divisor
    if divisor is None:
        eighth = max(1, cfg.img_size // 8)
        divisor = min(PAPER_SIZE_DIVISOR, max(8, 2 ** int(math.log2(eighth))))
    return min_size, max_size, divisor


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill in the options left to be derived from the run (the multi-scale range); idempotent."""
    cfg.min_size, cfg.max_size, cfg.size_divisor = multi_scale_range(cfg)
    return cfg


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
    if values.get("pretrained"):
        values = {**FINE_TUNE_DEFAULTS, **values}
    valid = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - valid)
    if unknown:
        raise ValueError(f"unknown training option(s): {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    config = TrainConfig(**{k: _coerce(k, v) for k, v in values.items()})
    config.model, config.task = resolve_task_model(config.model, config.task)
    config.data = config.data or get_task(config.task).default_data
    if config.amp not in ("none", "bf16", "fp16"):
        raise ValueError(f"amp must be none, bf16 or fp16, got {config.amp!r}")
    if config.accum_steps < 1 or config.epochs < 1 or (config.batch_size is not None and config.batch_size < 1):
        raise ValueError("epochs, batch_size and accum_steps must be at least 1")
    if config.warmup_max_fraction is not None and not 0 <= config.warmup_max_fraction <= 1:
        raise ValueError(f"warmup_max_fraction must be in [0, 1], got {config.warmup_max_fraction}")
    if not 0 <= config.random_erasing <= 1:
        raise ValueError(f"random_erasing is a probability in [0, 1], got {config.random_erasing}")
    return resolve_config(config)


def save_config(config: TrainConfig, path: Path, notes: list[str] = ()) -> None:
    """The config as YAML that ``--config`` reads back; ``notes`` (why the defaults chose what they
    did) go first, as comments."""
    text = "".join(f"# {note}\n" for note in notes) + yaml.safe_dump(config.to_dict())
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
