"""What the training defaults reach on a small real dataset, against other settings of the same run.

    python benchmarks/small_data.py [SETTING ...] [--per-class N] [--val-per-class N] [--epochs N]
                                    [--img-size N] [--seeds N] [--run-lengths SIZExEPOCHS ...]
                                    [--run-length-seeds N] [--json benchmarks/results/small_data.json]

The dataset is a small ImageFolder written from Fashion-MNIST (Debian's ``dataset-fashion-mnist``):
``--per-class`` training and ``--val-per-class`` validation images of each of its 10 classes, as
32x32 PNG files, the common fine-tuning case of a few thousand images or fewer. Each SETTING (default:
all of :data:`SETTINGS`) runs ``mobilevit train --model mobilevit_xxs --data DIR --img-size N
--epochs N`` with its own flags, in a fresh process, once per seed; the table gives the validation
top-1 of the kept ``model/`` (``summary.json``), and what the run chose (``config.yaml``). A second
table runs the defaults with and without ``--multi-scale`` at each of ``--run-lengths`` (image size and
epochs), where the multi-scale rule comes from.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

import common
from mobilevit.testing import write_fashion_folder

# Flags beside --data, --model, --img-size, --epochs and --seed. "defaults" gives none.
SETTINGS: dict[str, list[str]] = {
    "defaults": [],
    "ImageNet's (batch 128, multi-scale)": ["--batch-size", "128", "--multi-scale", "--lr", "0.002"],
    "batch 128": ["--batch-size", "128", "--lr", "0.002"],
    "batch 128, lr 0.004": ["--batch-size", "128", "--lr", "0.004"],
    "batch 64": ["--batch-size", "64", "--lr", "0.002"],
    "batch 32, multi-scale": ["--batch-size", "32", "--multi-scale", "--lr", "0.002"],
    "batch 32, lr 0.001": ["--batch-size", "32", "--lr", "0.001"],
    "batch 16": ["--batch-size", "16", "--lr", "0.002"],
    "batch 16, lr 0.0014": ["--batch-size", "16", "--lr", "0.0014"],
    "defaults, no EMA": ["--no-ema"],
}
MULTI_SCALE = {"defaults": [], "defaults, multi-scale": ["--multi-scale"]}
RUN_LENGTHS = ("32x16", "32x32", "64x8")  # SIZExEPOCHS of the multi-scale table
UNITS = {
    "top-1": "fraction",
    "top-1 min": "fraction",
    "top-1 max": "fraction",
    "batch": "count",
    "lr": "text",
    "img size": "count",
    "epochs": "count",
}


def train_once(data: Path, output: Path, flags: list[str], size: int, epochs: int, seed: int) -> dict:
    """One ``mobilevit train`` in its own process: the kept model's score and the resolved config."""
    command = [sys.executable, "-m", "mobilevit", "train", "--model", "mobilevit_xxs", "--data", str(data)]
    command += ["--img-size", str(size), "--epochs", str(epochs), "--seed", str(seed)]
    command += ["--output", str(output), *flags]
    subprocess.run(command, check=True, cwd=output.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = json.loads((output / "summary.json").read_text())
    config = yaml.safe_load((output / "config.yaml").read_text())
    return {"score": summary["model"]["score"], "config": config}


def measure(data: Path, name: str, flags: list[str], size: int, epochs: int, seeds: int) -> dict:
    """A table row: the setting, what the run chose, and its top-1 over ``seeds`` seeds."""
    runs = [train_once(data, data.parent / f"run-{seed}", flags, size, epochs, seed) for seed in range(seeds)]
    scores = [r["score"] for r in runs]
    config = runs[0]["config"]
    row = {
        "setting": name,
        "flags": " ".join(flags) or "(none)",
        "img size": size,
        "epochs": epochs,
        "batch": config["batch_size"],
        "lr": f"{config['lr']:.2g}",
        "multi-scale": "yes" if config["multi_scale"] else "no",
        "top-1": statistics.mean(scores),
    }
    if seeds > 1:
        row.update({"top-1 min": min(scores), "top-1 max": max(scores)})
    print(row, flush=True)
    for seed in range(seeds):
        shutil.rmtree(data.parent / f"run-{seed}")
    return row


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="*", metavar="SETTING", help=f"default: all of {', '.join(SETTINGS)}")
    parser.add_argument("--per-class", type=int, default=140)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--run-lengths", nargs="*", default=list(RUN_LENGTHS), metavar="SIZExEPOCHS")
    parser.add_argument("--run-length-seeds", type=int, default=1)
    common.add_json_arg(parser)
    args = parser.parse_args()
    unknown = sorted(set(args.settings) - set(SETTINGS))
    if unknown:
        parser.error(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    machine = common.measured_on()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_fashion_folder(Path(tmp) / "data", range(10), args.per_class, args.val_per_class)
        rows = [
            measure(data, name, SETTINGS[name], args.img_size, args.epochs, args.seeds)
            for name in args.settings or SETTINGS
        ]
        lengths = []
        for item in args.run_lengths:
            size, epochs = (int(v) for v in item.split("x"))
            lengths += [
                measure(data, name, flags, size, epochs, args.run_length_seeds) for name, flags in MULTI_SCALE.items()
            ]
    dataset = (
        f"mobilevit_xxs on {args.per_class * 10} Fashion-MNIST training images (32x32 PNG files); top-1 of "
        f"the kept model on {args.val_per_class * 10} validation images"
    )
    tables = [
        common.table(
            "small_data",
            rows,
            UNITS,
            f"{dataset}, {args.epochs} epochs at {args.img_size}x{args.img_size}, mean of {args.seeds} seeds",
        )
    ]
    if lengths:
        caption = f"{dataset}: the multi-scale sampler by size and run length ({args.run_length_seeds} seed)"
        tables.append(common.table("multi_scale", lengths, UNITS, caption))
    common.finish(run, args.json, tables, machine)


if __name__ == "__main__":
    main()
