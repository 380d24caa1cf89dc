"""A GPU check, ready to run: training speed and memory of our model against timm's on one CUDA GPU, then
through the training engine, and under DDP when several GPUs are visible.

    python benchmarks/gpu_check.py [--model mobilevit_s] [--img-size 256] [--batch-size 128]
                                   [--steps 200] [--warmup 20] [--rounds 4] [--modes fp32 bf16 ...]
                                   [--no-engine] [--ddp-processes N] [--json benchmarks/results/gpu_check.json]
    python benchmarks/gpu_check.py --device cpu ...   # a smoke run; its JSON goes to a temporary file

1. Ours (``mobilevit.create_model``) and timm's model of the same name train the same way on one
   synthetic batch already on the device: AdamW from ``mobilevit.engine.train.build_optimizer`` (lr
   ``LR``), the classification task's cross-entropy with the default label smoothing, channels_last, in
   each mode (fp32; AMP bf16; AMP fp16 with a GradScaler; each also under torch.compile). After
   --warmup untimed steps, --steps timed steps per model are split into --rounds rounds, ours and
   timm's interleaved; img/s comes from the median round, peak memory from
   ``torch.cuda.max_memory_allocated``.
2. The engine: ``mobilevit train`` on an ImageFolder of small PNG files written to a temporary folder,
   so that its DataLoader, host-to-device copies, EMA and validation run as a user's training does;
   img/s of its last epoch, from its metrics.csv.
3. With 2 or more GPUs visible (or ``--ddp-processes N``), the same engine run under torchrun.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

import common
import mobilevit
from mobilevit.engine.config import load_config
from mobilevit.engine.train import build_optimizer
from mobilevit.tasks import get_task
from mobilevit.testing import write_image_folder

NO_GPU = "no CUDA GPU: run with --device cpu for a smoke run"
CLASSES = 1000
ENGINE_IMAGE_SIZE = 64  # the PNG files' side: decoding stays cheap, RandomResizedCrop scales them up
MIB = 2**20
LR = 0.002  # the paper's; the same for both models, and img/s does not depend on it
RESULTS_PATH = common.RESULTS / "gpu_check.json"


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # the autocast dtype of each


@dataclass(frozen=True)
class Mode:
    """How a model trains: its precision (``PRECISIONS``), and whether torch.compile wraps it."""

    precision: str
    compile: bool

    @property
    def name(self) -> str:
        return self.precision + ("+compile" if self.compile else "")

    @property
    def dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]


MODES = {mode.name: mode for mode in (Mode(p, c) for c in (False, True) for p in PRECISIONS)}


@dataclass
class Training:
    """One model's training state in one mode: what runs the forward (compiled or not), and the rest."""

    forward: nn.Module
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    label_smoothing: float

    def resident_bytes(self) -> int:
        """What this training holds between steps: weights, buffers and optimizer state (gradients are freed)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        tensors += [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in tensors)


def skip_reason(mode: Mode, device: torch.device) -> str | None:
    """Why ``mode`` cannot run on ``device`` (None: it can)."""
    if mode.dtype == torch.float16 and device.type != "cuda":
        return f"skipped on {device.type}: fp16 autocast with a GradScaler needs a CUDA GPU"
    return None


def build(factory: Callable[[], nn.Module], mode: Mode, args: argparse.Namespace, device: torch.device) -> Training:
    """A model from ``factory`` with the optimizer, loss and scaler the trainer gives it (its default config)."""
    cfg = load_config(None, model=args.model, batch_size=args.batch_size, lr=LR)
    torch.manual_seed(cfg.seed)
    model = factory().to(device).to(memory_format=torch.channels_last).train()
    optimizer = build_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=mode.dtype == torch.float16)
    forward = torch.compile(model) if mode.compile else model
    return Training(forward, model, optimizer, scaler, cfg.label_smoothing)


def train_steps(training: Training, batch: tuple[torch.Tensor, torch.Tensor], steps: int, mode: Mode) -> torch.Tensor:
    """``steps`` optimizer steps on ``batch``, as the trainer takes them; returns the last loss."""
    images, labels = batch
    loss_fn = get_task("classification").loss
    for _ in range(steps):
        with torch.autocast(images.device.type, dtype=mode.dtype, enabled=mode.dtype is not None):
            loss = loss_fn(training.forward, images, labels, training.label_smoothing)
        training.scaler.scale(loss).backward()
        training.scaler.step(training.optimizer)
        training.scaler.update()
        training.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_round(
    training: Training, batch: tuple[torch.Tensor, torch.Tensor], steps: int, mode: Mode
) -> tuple[float, int | None, float]:
    """Seconds per step over ``steps`` steps, this training's memory peak in bytes (CUDA only) and its
    last loss. The peak counts this model's weights, optimizer state and batch, and the most its steps
    held on top, not the other model's state that shares the device."""
    device = batch[0].device
    synchronize(device)
    if device.type == "cuda":
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    loss = train_steps(training, batch, steps, mode)
    synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    peak = None
    if device.type == "cuda":
        held = training.resident_bytes() + sum(t.numel() * t.element_size() for t in batch)
        peak = torch.cuda.max_memory_allocated(device) - base + held
    return seconds, peak, loss.item()


def compare_mode(mode: Mode, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Ours against timm's in ``mode``: one row each; ours carries the ratios (speed and memory)."""
    factories = {
        "mobilevit": lambda: mobilevit.create_model(args.model, num_classes=CLASSES),
        "timm": lambda: timm.create_model(args.model, num_classes=CLASSES),
    }
    trainings = {key: build(factory, mode, args, device) for key, factory in factories.items()}
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=generator)
    labels = torch.randint(0, CLASSES, (args.batch_size,), generator=generator)
    batch = (images.to(device).contiguous(memory_format=torch.channels_last), labels.to(device))
    for training in trainings.values():  # first steps: optimizer state, kernel choice, compilation
        train_steps(training, batch, args.warmup, mode)
    seconds: dict[str, list[float]] = {key: [] for key in trainings}
    peaks: dict[str, list[int | None]] = {key: [] for key in trainings}
    losses: dict[str, float] = {}
    for index in range(args.rounds):
        order = list(trainings) if index % 2 == 0 else list(reversed(trainings))  # neither always goes first
        for key in order:
            step_s, peak, losses[key] = timed_round(trainings[key], batch, args.steps // args.rounds, mode)
            seconds[key].append(step_s)
            peaks[key].append(peak)
    rates = {key: args.batch_size / statistics.median(values) for key, values in seconds.items()}
    memory = {key: None if None in values else max(values) / MIB for key, values in peaks.items()}
    rows = [
        {
            "mode": mode.name,
            "implementation": key,
            "img/s": rates[key],
            "speed vs timm": None,
            "peak MiB": memory[key],
            "memory vs timm": None,
            "last loss": losses[key],
        }
        for key in trainings
    ]
    ours = rows[0]
    ours["speed vs timm"] = rates["mobilevit"] / rates["timm"]
    if memory["mobilevit"] is not None:
        ours["memory vs timm"] = memory["mobilevit"] / memory["timm"]
    del trainings, batch
    gc.collect()
    if mode.compile:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def engine_images(args: argparse.Namespace, processes: int) -> int:
    """Training images for ``--engine-steps`` optimizer steps per epoch in each of ``processes`` processes."""
    return args.engine_steps * args.batch_size * processes


def engine_workers(args: argparse.Namespace, processes: int) -> int:
    """DataLoader workers per process: ``--workers``, else the cores shared out, at most 8 each."""
    return args.workers or max(1, min(8, (os.cpu_count() or 1) // processes))


def engine_run(args: argparse.Namespace, device: torch.device, data: Path, processes: int) -> dict[str, Any]:
    """``mobilevit train`` in ``processes`` processes (torchrun when more than one), and the img/s of its
    last epoch as its metrics.csv records it (all processes' images over the epoch's time)."""
    workers = engine_workers(args, processes)
    output = data.parent / f"run-{processes}"
    launcher = [sys.executable, "-m", "mobilevit"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        launcher += ["-m", "mobilevit"]
    command = [
        *launcher, "train", "--model", args.model, "--data", str(data), "--output", str(output),
        "--epochs", str(args.engine_epochs), "--img-size", str(args.img_size), "--batch-size", str(args.batch_size),
        "--no-multi-scale", "--amp", args.engine_amp, "--channels-last", "--ema", "--workers", str(workers),
        "--limit-train", str(engine_images(args, processes)),
    ]  # fmt: skip
    env = dict(os.environ)
    if device.type == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # the engine trains on a GPU whenever it sees one
    print(f"engine, {processes} process{'es' if processes > 1 else ''}: {' '.join(command)}", flush=True)
    result = subprocess.run(command, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"the engine run failed ({result.returncode}):\n{(result.stdout + result.stderr)[-4000:]}")
    with open(output / "metrics.csv", newline="") as f:
        last = list(csv.DictReader(f))[-1]
    rate = float(last["img_per_s"])
    label = "mobilevit train" if processes == 1 else f"torchrun --nproc_per_node {processes} -m mobilevit train"
    return {
        "run": label,
        "processes": processes,
        "workers per process": workers,
        "img/s": rate,
        "img/s per process": rate / processes,
    }


def ddp_processes(args: argparse.Namespace, device: torch.device) -> int:
    """``--ddp-processes``, else every visible GPU when there are 2 or more (0: no DDP run)."""
    if args.ddp_processes is not None:
        return args.ddp_processes
    count = torch.cuda.device_count() if device.type == "cuda" else 0
    return count if count >= 2 else 0


def engine_rows(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """The engine alone, then under DDP when asked for, on one ImageFolder written for the largest run."""
    runs = [1, *([n] if (n := ddp_processes(args, device)) else [])]
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp:
        images = engine_images(args, max(runs))
        data = write_image_folder(
            Path(tmp) / "data",
            per_class=math.ceil(images / 2),
            val_per_class=max(1, args.batch_size // 2),
            size=ENGINE_IMAGE_SIZE,
        )
        return [engine_run(args, device, data, processes) for processes in runs]


def write_partial(run: common.Run, path: Path, tables: list[dict[str, Any]], machine: dict[str, Any]) -> None:
    """The results so far, so that a run cut short (a device lent for minutes) keeps what it measured."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(common.envelope(run, tables, machine), indent=2) + "\n")


def output_path(json_path: Path | None, device: torch.device) -> Path:
    """``--json``, else benchmarks/results/gpu_check.json on CUDA; a CPU smoke run's results are no GPU
    results, so by default they go to a temporary file that the benchmarks page never shows."""
    if json_path is not None:
        return json_path
    return RESULTS_PATH if device.type == "cuda" else Path(tempfile.gettempdir()) / "gpu_check-cpu.json"


def device_arg(value: str) -> torch.device:
    if value not in ("cuda", "cpu"):
        raise argparse.ArgumentTypeError(f"--device is cuda or cpu, got {value!r}")
    return torch.device(value)


def positive(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=device_arg, default=torch.device("cuda"), help="cuda (default) or cpu")
    parser.add_argument("--model", default="mobilevit_s", help="a classifier both we and timm have")
    parser.add_argument("--img-size", type=positive, default=256)
    parser.add_argument("--batch-size", type=positive, default=128, help="per process")
    parser.add_argument("--steps", type=positive, default=200, help="timed steps per model and mode, in all rounds")
    parser.add_argument("--warmup", type=positive, default=20, help="untimed steps first (compilation among them)")
    parser.add_argument("--rounds", type=positive, default=4, help="interleaved rounds the timed steps are split into")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="default: all")
    parser.add_argument("--no-engine", dest="engine", action="store_false", help="skip the engine and DDP runs")
    parser.add_argument("--engine-steps", type=positive, default=50, help="engine: optimizer steps per epoch")
    parser.add_argument("--engine-epochs", type=positive, default=2, help="engine: epochs (the last one is reported)")
    parser.add_argument("--engine-amp", choices=("none", "bf16", "fp16"), default="bf16", help="engine: --amp")
    parser.add_argument(
        "--workers",
        type=positive,
        help="engine: DataLoader workers per process (default: the cores shared out, at most 8)",
    )
    parser.add_argument(
        "--ddp-processes", type=int, help="engine under torchrun with N processes (default: all GPUs when 2+; 0: none)"
    )
    parser.add_argument("--json", type=Path, help="default: benchmarks/results/gpu_check.json; on cpu a temp file")
    args = parser.parse_args()
    if args.steps < args.rounds:
        parser.error(f"--steps {args.steps} is fewer than --rounds {args.rounds}: each round times at least one step")
    if args.ddp_processes is not None and (args.ddp_processes < 0 or args.ddp_processes == 1):
        parser.error(f"--ddp-processes is 0 (no DDP run) or at least 2, got {args.ddp_processes}")
    if not timm.is_model(args.model):
        parser.error(f"timm has no {args.model}, so there is nothing to compare with; choose a v1 or v2 classifier")
    return args


def main() -> None:
    run = common.start_run()
    args = parse_args()
    device = args.device
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"error: {NO_GPU}")
    if device.type == "cuda" and args.engine and ddp_processes(args, device) > torch.cuda.device_count():
        sys.exit(
            f"error: --ddp-processes {args.ddp_processes} but {torch.cuda.device_count()} GPU(s) visible: "
            "one process per GPU, so ask for at most that many (0: no DDP run)"
        )
    if device.type == "cpu" and args.engine and args.engine_amp == "fp16":
        sys.exit("error: --engine-amp fp16 needs a CUDA GPU; on cpu use --engine-amp bf16 or none")
    path = output_path(args.json, device)
    machine = common.measured_on()
    if device.type == "cuda":
        machine.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count())
        print(f"GPU: {machine['gpu']} ({machine['gpus']} visible)", flush=True)

    size = f"{args.img_size}x{args.img_size}"
    rows, notes = [], []
    for name in args.modes:
        mode = MODES[name]
        reason = skip_reason(mode, device)
        if reason:
            notes.append(f"{name}: {reason}")
            continue
        print(f"{name}: {args.warmup} + {args.steps} steps per model", flush=True)
        rows += compare_mode(mode, args, device)
    if device.type == "cuda":
        notes.append(
            f"fp32: matmuls at torch's '{torch.get_float32_matmul_precision()}' precision, cuDNN TF32 "
            f"{'on' if torch.backends.cudnn.allow_tf32 else 'off'}; cuDNN benchmark "
            f"{'on' if torch.backends.cudnn.benchmark else 'off'}"
        )
    else:
        notes.append(f"peak memory is measured on CUDA only; this run was on {device.type}")
    caption = (
        f"Training on {device.type}, {args.model} at {size}, batch {args.batch_size}, channels_last, AdamW "
        f"(build_optimizer, lr {LR:g}), one synthetic batch on the device; {args.rounds} x "
        f"{args.steps // args.rounds} timed steps in interleaved rounds (medians) after {args.warmup} warm-up "
        "steps; the ratios are ours over timm's"
    )
    units = {
        "img/s": "rate",
        "speed vs timm": "ratio",
        "peak MiB": "rate",
        "memory vs timm": "ratio",
        "last loss": "rate",
    }
    tables = [common.table("modes", rows, units, caption, notes)] if rows else []
    if not tables:
        sys.exit(f"error: no mode of {', '.join(args.modes)} runs on {device.type}: {'; '.join(notes)}")
    write_partial(run, path, tables, machine)
    if args.engine:
        engine_caption = (
            f"The training engine on {device.type}: {args.model} at {size}, batch {args.batch_size} per process, "
            f"AMP {args.engine_amp}, channels_last, fixed size, EMA, {args.engine_steps} steps per epoch and "
            f"process over {ENGINE_IMAGE_SIZE}x{ENGINE_IMAGE_SIZE} PNG files; img/s of the last of "
            f"{args.engine_epochs} epochs, from metrics.csv"
        )
        engine_units = {
            "processes": "count",
            "workers per process": "count",
            "img/s": "rate",
            "img/s per process": "rate",
        }
        tables.append(common.table("engine", engine_rows(args, device), engine_units, engine_caption))
    common.finish(run, path, tables, machine)


if __name__ == "__main__":
    main()
