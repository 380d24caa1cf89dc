"""Training loop with the paper's recipe, resumable from any checkpoint: classification,
segmentation and detection (what differs between them lives in :mod:`mobilevit.tasks`).

Every epoch evaluates the trained weights and, with ``ema``, their moving average: ``metrics.csv``,
TensorBoard and ``curves.png`` show both (``val_<metric>`` and ``val_ema_<metric>``). ``best/`` holds
the weights that scored highest at any epoch end (either set, like ml-cvnets' best and EMA-best
checkpoints together), and the final ``model/`` the better of the two after the last epoch; the
log and ``summary.json`` say which.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import re
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from mobilevit.checkpoint_io import CONFIG_FILE, atomic_write, load_pickle, read_json
from mobilevit.data.sampler import MultiScaleBatchSampler
from mobilevit.engine.config import TrainConfig, choose_for_data, multi_scale_range, save_config
from mobilevit.engine.threads import thread_governor
from mobilevit.errors import CheckpointError, NonFiniteLossError, require_extra
from mobilevit.models.factory import create_model
from mobilevit.models.weights import load_state_dict_checked
from mobilevit.plots import plot_curves
from mobilevit.tasks import Task, get_task, to_device

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger(__name__)
CHECKPOINT_PATTERN = re.compile(r"^step-(\d+)\.pt$")
FUSED_ADAMW_DEVICES = ("cpu", "cuda")  # where torch >= 2.4 (the floor in pyproject.toml) has a fused AdamW
# The weights evaluated each epoch, by their name in summary.json (and --weights): the prefix of their
# metrics (val_top1, val_ema_top1...) and their name in the log.
METRIC_PREFIXES = {"model": "val_", "ema": "val_ema_"}
LOG_NAMES = {"model": "trained (non-EMA)", "ema": "EMA"}


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Distributed(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl")
        device = torch.device("cuda", local_rank)
    else:
        dist.init_process_group("gloo")
        device = torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def build_data(cfg: TrainConfig, task: Task):
    train_set, val_set, classes = task.datasets(cfg.data, cfg.splits)
    if cfg.limit_train:
        train_set = torch.utils.data.Subset(train_set, range(min(cfg.limit_train, len(train_set))))
    if cfg.limit_val:
        val_set = torch.utils.data.Subset(val_set, range(min(cfg.limit_val, len(val_set))))
    return train_set, val_set, classes


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The paper's AdamW over ``model``'s parameters: fused (one kernel updates them all) on CPU and
    CUDA, elsewhere torch's default (foreach where the device has it, else one parameter at a time).
    The results match the one-at-a-time loop within float rounding."""
    fused = {"fused": True} if device.type in FUSED_ADAMW_DEVICES else {}
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)


def loader_options(device: torch.device, workers: int) -> dict[str, Any]:
    """DataLoader settings for training on ``device``. On CUDA, batches in page-locked memory, so that
    their non-blocking copies to the GPU overlap its compute, and workers kept from one epoch to the
    next; on CPU neither helps."""
    cuda = device.type == "cuda"
    return {"num_workers": workers, "pin_memory": cuda, "persistent_workers": cuda and workers > 0}


def warmup_steps(cfg: TrainConfig, total_steps: int) -> int:
    """``cfg.warmup_steps``, at most ``cfg.warmup_max_fraction`` of the run's ``total_steps``."""
    if cfg.warmup_max_fraction is None:
        return cfg.warmup_steps
    return min(cfg.warmup_steps, int(cfg.warmup_max_fraction * total_steps))


def get_lr(step: int, cfg: TrainConfig, total_steps: int, warmup: int | None = None) -> float:
    """The learning rate of optimizer step ``step``: linear warm-up from warmup_lr to lr over ``warmup``
    steps (default: :func:`warmup_steps`), then cosine down to min_lr at ``total_steps``."""
    warmup = warmup_steps(cfg, total_steps) if warmup is None else warmup
    if step < warmup:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def ema_update(momentum: float, warmup: bool):
    """``AveragedModel``'s update: ema = (1 - m) ema + m w over parameters and BatchNorm statistics.

    With ``warmup`` the momentum starts near 1 and falls to ``momentum`` (``1 - (1 + t) / (10 + t)``
    at step t), so that a short run's average is not dominated by the random initialisation.
    """

    @torch.no_grad()
    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        t = float(num_averaged)
        m = max(momentum, 1 - (1 + t) / (10 + t)) if warmup else momentum
        floats = [(e, c) for e, c in zip(ema, current, strict=True) if e.is_floating_point()]
        if floats:  # AveragedModel groups tensors by dtype: the integer group has none
            torch._foreach_lerp_([e for e, _ in floats], [c for _, c in floats], m)
        for e, c in zip(ema, current, strict=True):
            if not e.is_floating_point():
                e.copy_(c)

    return update


def pretrained_label_names(pretrained: str | os.PathLike) -> list[str] | None:
    """The class names saved with weights of this package (``model/config.json`` beside or in
    ``pretrained``), or None when the weights do not name their classes."""
    path = Path(pretrained)
    if not path.exists():  # a published name or a Hub repo id
        return None
    config = path / CONFIG_FILE if path.is_dir() else path.with_name(CONFIG_FILE)
    if not config.is_file():
        return None
    try:
        names = read_json(config).get("pretrained_cfg", {}).get("label_names")
    except (CheckpointError, AttributeError):
        return None
    return list(names) if isinstance(names, list) else None


@dataclass(frozen=True)
class Choice:
    """The weights a run keeps (``"model"`` or ``"ema"``, see :data:`METRIC_PREFIXES`): ``model/`` the
    better set after the last epoch, ``best/`` the better set of the epoch that scored highest."""

    weights: str
    score: float
    best_epoch: int
    best_weights: str
    best_score: float


def _better(row: dict[str, Any], metric: str) -> tuple[str, float]:
    """The better weights of an epoch's metrics ``row`` and their score; the EMA on a tie (the first
    maximum counts)."""
    scores = {w: row[f"{p}{metric}"] for w, p in reversed(METRIC_PREFIXES.items()) if f"{p}{metric}" in row}
    weights = max(scores, key=scores.__getitem__)
    return weights, scores[weights]


def choose_weights(metrics: list[dict[str, Any]], metric: str) -> Choice:
    """What ``model/`` and ``best/`` hold, from the epochs' validation ``metrics`` (rows of
    ``metrics.csv``) and the task's headline ``metric``: the better weights of the last epoch, and of
    the epoch whose better weights scored highest (the earliest on a tie)."""
    if not metrics:
        raise ValueError("no epoch has been evaluated yet: there are no weights to choose from")
    best = max(metrics, key=lambda row: (_better(row, metric)[1], -row["epoch"]))
    return Choice(*_better(metrics[-1], metric), best["epoch"], *_better(best, metric))


def _summary(row: dict[str, Any], weights: str, metric: str) -> dict[str, Any]:
    """``summary.json``'s entry for the ``weights`` kept from the epoch of ``row``, with what both scored."""
    scores = {f"{p}{metric}": row[f"{p}{metric}"] for p in METRIC_PREFIXES.values() if f"{p}{metric}" in row}
    return {
        "epoch": row["epoch"],
        "weights": weights,
        "metric": metric,
        "score": row[f"{METRIC_PREFIXES[weights]}{metric}"],
        **scores,
    }


def latest_checkpoint(directory: Path) -> Path | None:
    found = [(int(m.group(1)), p) for p in directory.glob("step-*.pt") if (m := CHECKPOINT_PATTERN.match(p.name))]
    return max(found)[1] if found else None


class Trainer:
    """The setup and the state of a run: data, model, EMA, optimizer, step and epoch counters, and
    their checkpoints. One optimizer step is :meth:`train_step`."""

    def __init__(self, cfg: TrainConfig) -> None:
        # The whole train extra before the data is read, not epochs later: TensorBoard logs each epoch,
        # torchmetrics and pycocotools score detection, matplotlib plots after the last epoch.
        require_extra("train", "Training", "tensorboard", "matplotlib", "torchmetrics", "pycocotools")
        self.cfg = cfg
        self.dist = setup_distributed()
        self.governor = thread_governor(cfg.threads, self.dist.device)
        if cfg.amp == "fp16" and self.dist.device.type != "cuda":
            raise ValueError("--amp fp16 needs a GPU; on CPU use --amp bf16")
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        self.out = Path(cfg.output)
        self.ckpt_dir = self.out / "checkpoints"
        self.task = get_task(cfg.task)
        self._build_data()
        self.model = self._build_model()
        self.ema = (
            AveragedModel(self.model, multi_avg_fn=ema_update(cfg.ema_momentum, cfg.ema_warmup), use_buffers=True)
            if cfg.ema
            else None
        )
        # Kept apart from train_model, which --compile wraps: train_step needs its no_sync().
        self.ddp = nn.parallel.DistributedDataParallel(self.model) if self.dist.world_size > 1 else None
        self.train_model: nn.Module = self.model if self.ddp is None else self.ddp
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)
        self.optimizer = build_optimizer(self.model, cfg, self.dist.device)
        self.scaler = torch.amp.GradScaler(self.dist.device.type, enabled=cfg.amp == "fp16")
        self.total_steps = self._count_steps()
        self.warmup_steps = warmup_steps(cfg, self.total_steps)
        if self.warmup_steps < cfg.warmup_steps and self.dist.is_main:
            log.info(
                "warm-up shortened from %d to %d steps: at most %g of the run's %d steps (--warmup-max-fraction)",
                cfg.warmup_steps,
                self.warmup_steps,
                cfg.warmup_max_fraction,
                self.total_steps,
            )
        self.step = 0
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []

    def _build_data(self) -> None:
        cfg = self.cfg
        train_set, val_set, self.classes = build_data(cfg, self.task)
        self.num_classes = len(self.classes)
        train_data = self.task.train_dataset(train_set, cfg, self.num_classes)
        in_memory = getattr(train_data, "in_memory", False)
        self.choices = choose_for_data(cfg, len(train_set), self.dist.world_size, in_memory)
        if self.dist.is_main:
            for choice in self.choices:
                log.info("chose %s", choice)
        self.sampler = self._sampler(len(train_set))
        options = loader_options(self.dist.device, cfg.workers)
        self.train_loader = torch.utils.data.DataLoader(
            train_data,
            batch_sampler=self.sampler,
            collate_fn=self.task.collate,
            # Its own generator: creating an epoch's iterator must not draw from the global RNG,
            # or a run resumed mid-epoch would see a shifted augmentation stream.
            generator=torch.Generator().manual_seed(cfg.seed),
            **options,
        )
        self.val_loader = torch.utils.data.DataLoader(
            self.task.val_dataset(val_set, cfg.img_size, self.num_classes),
            batch_size=cfg.batch_size,
            collate_fn=self.task.collate,
            **options,
        )

    def _build_model(self) -> nn.Module:
        cfg = self.cfg
        overrides = self.task.model_options(cfg)
        if cfg.transformer_dropout is not None:
            overrides["transformer_dropout"] = cfg.transformer_dropout
        model = create_model(cfg.model, num_classes=self.num_classes, pretrained=cfg.pretrained, **overrides)
        if cfg.pretrained and hasattr(model, "reset_classifier"):
            # Weights of as many classes as the data, but other ones: their classifier would map the
            # data's classes to the wrong outputs. (Other counts already get a new one.)
            labels = pretrained_label_names(cfg.pretrained)
            if labels is not None and labels != list(self.classes):
                model.reset_classifier(self.num_classes)
                if self.dist.is_main:
                    log.info("new classifier: %s was trained on other classes (%s)", cfg.pretrained, ", ".join(labels))
        model.pretrained_cfg.update(label_names=self.classes, input_size=(3, cfg.img_size, cfg.img_size))
        model.to(self.dist.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _sampler(self, num_samples: int) -> MultiScaleBatchSampler:
        cfg = self.cfg
        min_size, max_size, divisor = multi_scale_range(cfg)
        if not cfg.multi_scale:
            min_size, max_size = cfg.img_size, cfg.img_size
        sampler = MultiScaleBatchSampler(
            num_samples,
            base_size=cfg.img_size,
            base_batch_size=cfg.batch_size,
            min_size=min_size,
            max_size=max_size,
            num_scales=cfg.num_scales if cfg.multi_scale else 1,
            divisor=divisor,
            num_replicas=self.dist.world_size,
            rank=self.dist.rank,
            seed=cfg.seed,
        )
        if cfg.multi_scale and self.dist.is_main:
            log.info("multi-scale: %s (size, batch size)", ", ".join(f"{s}:{b}" for s, b in sampler.scales))
        return sampler

    def _count_steps(self) -> int:
        """Optimizer steps of the whole run (the multi-scale plan differs per epoch)."""
        batches = 0
        for epoch in range(self.cfg.epochs):
            self.sampler.set_epoch(epoch)
            batches += len(self.sampler) // self.cfg.accum_steps
        self.sampler.set_epoch(0)
        return max(1, batches)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self, batches_done: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(batches_done=batches_done),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "step": self.step,
            "epoch": self.epoch,
            "config": self.cfg.to_dict(),
            "classes": self.classes,
            "model_name": self.cfg.model,
            "task": self.cfg.task,
            "num_classes": self.num_classes,
            "model_args": self.model.model_args(),
            "metrics": self.metrics,
        }

    def save(self, batches_done: int) -> Path | None:
        if not self.dist.is_main:
            return None
        path = self.ckpt_dir / f"step-{self.step:08d}.pt"
        state = self.state_dict(batches_done)
        atomic_write(path, lambda tmp: torch.save(state, tmp))
        old = sorted(p for p in self.ckpt_dir.glob("step-*.pt") if CHECKPOINT_PATTERN.match(p.name))
        for stale in old[: -self.cfg.keep_last]:
            stale.unlink(missing_ok=True)
        return path

    def resume(self, path: Path) -> None:
        state = load_pickle(path)
        if not isinstance(state["rng"]["python"], tuple):  # random.getstate() as it was saved
            raise CheckpointError(
                f"cannot resume from {path}: an earlier development version of mobilevit wrote it, with "
                "its Python RNG state in a form this version does not read. Start the run again without "
                "--resume, or finish it with the version that wrote the checkpoint."
            )
        load_state_dict_checked(self.model, state["model"], context=f" (resuming from {path})")
        if self.ema and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.metrics = state.get("metrics", [])
        log.info("resumed from %s at epoch %d, step %d", path, self.epoch, self.step)

    # -- loop ----------------------------------------------------------------------------------
    def _autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.cfg.amp)
        return torch.autocast(self.dist.device.type, dtype=dtype, enabled=dtype is not None)

    def train_step(self, micro_batches: list[tuple[torch.Tensor, Any]]) -> tuple[float, int]:
        """One optimizer step over ``accum_steps`` micro-batches; returns their summed loss and image count.

        The loss is read from the device once per step, not per micro-batch: summed on the device and
        read after the last backward, both for the log and to stop before a non-finite loss reaches the
        weights. Under DDP the gradients are all-reduced once, in the last micro-batch's backward
        (``no_sync`` before it).
        """
        cfg, device = self.cfg, self.dist.device
        lr = get_lr(self.step, cfg, self.total_steps, self.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum, seen = torch.zeros((), device=device), 0
        for i, (images, targets) in enumerate(micro_batches):
            images, targets = images.to(device, non_blocking=True), to_device(targets, device)
            if cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            last = i == len(micro_batches) - 1
            with nullcontext() if self.ddp is None or last else self.ddp.no_sync():
                with self._autocast():
                    loss = self.task.loss(self.train_model, images, targets, cfg.label_smoothing)
                self.scaler.scale(loss / cfg.accum_steps).backward()  # gradients accumulate over micro-batches
            loss_sum += loss.detach().float() * len(images)
            seen += len(images)
        total = loss_sum.item()
        if not math.isfinite(total):
            raise NonFiniteLossError(
                f"loss is {total / seen} at epoch {self.epoch + 1}, step {self.step}; the last good "
                f"checkpoint in {self.ckpt_dir} is kept. Lower --lr, enable --grad-clip or use --amp none."
            )
        if cfg.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self.ema.update_parameters(self.model)
        self.step += 1
        return total, seen

    def train_epoch(self) -> dict[str, float]:
        """Optimizer steps over the epoch's batches (from a resumed position), saving every
        ``save_every`` steps; micro-batches that do not fill a last ``accum_steps`` group are left out."""
        cfg = self.cfg
        self.train_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        batches_done = self.sampler.resume_offset  # > 0 when resuming mid-epoch
        loss_sum, seen, skipped, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(self.train_loader, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", disable=not self.dist.is_main)
        micro_batches: list[tuple[torch.Tensor, Any]] = []
        for images, targets, n_skipped in bar:
            skipped += n_skipped
            batches_done += 1
            if len(images):  # all of a batch's images may be unreadable
                micro_batches.append((images, targets))
            if batches_done % cfg.accum_steps:
                continue
            step_loss, step_seen = self.train_step(micro_batches)
            micro_batches = []
            if self.governor:
                self.governor.update()
            loss_sum, seen = loss_sum + step_loss, seen + step_seen
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save(batches_done)
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{loss_sum / max(seen, 1):.4f}",
                lr=f"{self.optimizer.param_groups[0]['lr']:.2e}",
                img_s=f"{seen / max(elapsed, 1e-9):.0f}",
            )
        loss_sum, seen, skipped = self._sum_over_ranks(loss_sum, seen, skipped)
        if skipped and self.dist.is_main:
            log.warning("skipped %d unreadable images this epoch", skipped)
        elapsed = time.perf_counter() - start
        return {
            "train_loss": loss_sum / max(seen, 1),
            "epoch_time": elapsed,
            "img_per_s": seen / max(elapsed, 1e-9),
            "skipped": int(skipped),
        }

    def _average_buffers(self) -> None:
        """Average BatchNorm statistics over ranks (DDP only syncs parameters), so every rank
        evaluates and ends with the same weights."""
        if self.dist.world_size == 1:
            return
        for module in (self.model, self.ema):
            for buffer in module.buffers() if module is not None else ():
                if buffer.is_floating_point():
                    dist.all_reduce(buffer)
                    buffer /= self.dist.world_size

    def _sum_over_ranks(self, *values: float) -> list[float]:
        """Totals over all processes, so that every rank logs the global epoch figures."""
        if self.dist.world_size == 1:
            return list(values)
        totals = torch.tensor(values, dtype=torch.float64, device=self.dist.device)
        dist.all_reduce(totals)
        return totals.tolist()

    def eval_models(self) -> dict[str, nn.Module]:
        """The weights evaluated each epoch, by name (:data:`METRIC_PREFIXES`): ``model`` and ``ema``."""
        return {"model": self.model} if self.ema is None else {"model": self.model, "ema": self.ema.module}

    def fit(self) -> list[dict[str, Any]]:
        from torch.utils.tensorboard import SummaryWriter  # the train extra, checked by __init__

        cfg = self.cfg
        if cfg.resume:
            path = latest_checkpoint(self.ckpt_dir) if cfg.resume == "auto" else Path(cfg.resume)
            if path is not None:
                self.resume(path)
            elif cfg.resume != "auto":
                raise FileNotFoundError(f"no checkpoint to resume from at {cfg.resume}")
        writer = None
        if self.dist.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "config.yaml", notes=[f"chose {choice}" for choice in self.choices])
            writer = SummaryWriter(str(self.out / "tensorboard"))
        try:
            self._run_epochs(writer)
        finally:
            if writer is not None:
                writer.close()
        if self.dist.is_main:
            self._save_final()
        return self.metrics

    def _save_final(self) -> None:
        """``model/``: the better of the trained and EMA weights after the last epoch; ``summary.json``
        names it and the best epoch (whose weights are in ``best/``)."""
        models = self.eval_models()
        if not self.metrics:  # nothing trained (epochs already done before a resume, say)
            next(reversed(models.values())).save_pretrained(self.out / "model")
            return
        metric, last = self.task.metrics[0], self.metrics[-1]
        kept = choose_weights(self.metrics, metric)
        models[kept.weights].save_pretrained(self.out / "model")
        others = [f"{LOG_NAMES[w]} {last[f'{METRIC_PREFIXES[w]}{metric}']:.4f}" for w in models if w != kept.weights]
        others_text = f" ({', '.join(others)})" if others else ""
        log.info(
            "final model/: the %s weights, val %s %.4f%s", LOG_NAMES[kept.weights], metric, kept.score, others_text
        )
        log.info(
            "best/: epoch %d, %s weights, val %s %.4f",
            kept.best_epoch,
            LOG_NAMES[kept.best_weights],
            metric,
            kept.best_score,
        )
        best = next(row for row in self.metrics if row["epoch"] == kept.best_epoch)
        summary = {"model": _summary(last, kept.weights, metric), "best": _summary(best, kept.best_weights, metric)}
        text = json.dumps(summary, indent=2) + "\n"
        atomic_write(self.out / "summary.json", lambda tmp: Path(tmp).write_text(text))
        scores = [f"{METRIC_PREFIXES[w]}{m}" for w in models for m in self.task.metrics]
        plot_curves(self.metrics, self.out / "curves.png", scores)

    def _run_epochs(self, writer: SummaryWriter | None) -> None:
        cfg = self.cfg
        while self.epoch < cfg.epochs:
            self.sampler.set_epoch(self.epoch)  # keeps a resumed mid-epoch position
            train_metrics = self.train_epoch()
            self._average_buffers()
            row = {"epoch": self.epoch + 1, "step": self.step, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(train_metrics)
            for weights, model in self.eval_models().items():
                val = self.task.evaluate(model, self.val_loader, self.num_classes, self.dist.device)
                row.update({f"{METRIC_PREFIXES[weights]}{name}": val[name] for name in self.task.metrics})
            self.epoch += 1
            self.metrics.append(row)
            if writer is not None:
                self._log_epoch(row, writer)
            kept = choose_weights(self.metrics, self.task.metrics[0])
            if self.dist.is_main and kept.best_epoch == row["epoch"]:
                # Before the checkpoint: a run killed in between redoes this epoch and writes it again.
                self.eval_models()[kept.best_weights].save_pretrained(self.out / "best")
            self.save(batches_done=0)

    def _log_epoch(self, row: dict[str, Any], writer: SummaryWriter) -> None:
        for key, value in row.items():
            if key not in ("epoch", "step"):
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            csv_writer = csv.DictWriter(f, fieldnames=list(row))
            if new:
                csv_writer.writeheader()
            csv_writer.writerow(row)
        headline = self.task.metrics[0]
        ema = f", EMA {row[f'val_ema_{headline}']:.4f}" if f"val_ema_{headline}" in row else ""
        log.info(
            "epoch %d: train loss %.4f, val %s %.4f%s, %.0f img/s",
            row["epoch"],
            row["train_loss"],
            headline,
            row[f"val_{headline}"],
            ema,
            row["img_per_s"],
        )


def train(cfg: TrainConfig) -> list[dict[str, Any]]:
    trainer = Trainer(cfg)
    try:
        return trainer.fit()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
