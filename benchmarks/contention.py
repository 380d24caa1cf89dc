"""Training speed on a busy machine: a run alone, beside a second training, and beside a numpy matmul
loop, with a fixed thread count (what torch does by itself) and with the defaults (compute threads
that follow the cores other processes leave free: ``mobilevit.engine.threads``).

    python benchmarks/contention.py [--workloads NAME ...] [--epochs N] [--json benchmarks/results/contention.json]

Every training is ``mobilevit train`` in its own process; its speed is the median ``img_per_s`` of
``metrics.csv`` over the epochs after the first. Beside a second training, both run the same command
and the figure is their mean. The numpy loop multiplies 1024x1024 float32 matrices with numpy's own
threads until the training ends.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

import common
from mobilevit.testing import write_fashion_folder

NUMPY_LOOP = "import numpy as np\na = np.random.rand(1024, 1024).astype(np.float32)\nwhile True:\n    a @ a\n"
FIXED = str(torch.get_num_threads())  # torch's own choice: one thread per physical core
SETTINGS = {"fixed threads (before)": ["--threads", FIXED], "governed (default)": []}
# name: (flags, scenarios, needs an ImageFolder). Small inputs show contention at its worst; the
# large one checks that the default costs nothing on an idle machine.
WORKLOADS: dict[str, tuple[list[str], tuple[str, ...], bool]] = {
    "xxs 32x32, Fashion-MNIST in memory": (
        [
            *("--model", "mobilevit_xxs", "--data", "fashion-mnist", "--img-size", "32", "--batch-size", "128"),
            *("--limit-train", "4096", "--limit-val", "256"),
        ],
        ("alone", "beside a training", "beside numpy"),
        False,
    ),
    "xxs 32x32, ImageFolder, 2 workers": (
        ["--model", "mobilevit_xxs", "--img-size", "32", "--batch-size", "128", "--workers", "2"],
        ("alone", "beside a training", "beside numpy"),
        True,
    ),
    "s 256x256, Fashion-MNIST in memory": (
        [
            *("--model", "mobilevit_s", "--data", "fashion-mnist", "--img-size", "256", "--batch-size", "16"),
            *("--limit-train", "96", "--limit-val", "16"),
        ],
        ("alone",),
        False,
    ),
}
UNITS = {"img/s": "rate", "vs alone": "ratio", "vs before": "ratio"}


def command(flags: list[str], setting: list[str], output: Path, epochs: int) -> list[str]:
    base = [sys.executable, "-m", "mobilevit", "train", *flags, "--epochs", str(epochs), "--no-multi-scale"]
    return [*base, "--no-ema", "--output", str(output), *setting]


def speed(output: Path) -> float:
    """Median img/s of the epochs after the first (the first one warms up)."""
    with open(output / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return statistics.median(float(r["img_per_s"]) for r in rows[1:] or rows)


def measure(scenario: str, flags: list[str], setting: list[str], output: Path, epochs: int) -> float:
    """img/s of one training in ``scenario``; beside a training, the mean of the two."""
    outputs = [output]
    others: list[subprocess.Popen] = []
    if scenario == "beside numpy":
        others.append(subprocess.Popen([sys.executable, "-c", NUMPY_LOOP]))
    if scenario == "beside a training":
        outputs.append(output.with_name(output.name + "-twin"))
        others.append(subprocess.Popen(command(flags, setting, outputs[1], epochs), stderr=subprocess.DEVNULL))
    try:
        subprocess.run(command(flags, setting, output, epochs), check=True, stderr=subprocess.DEVNULL)
        if scenario == "beside a training":
            others[0].wait()
    finally:
        for process in others:
            process.kill()
            process.wait()
    return statistics.mean(speed(o) for o in outputs)


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--epochs", type=int, default=3)
    common.add_json_arg(parser)
    args = parser.parse_args()
    machine = common.measured_on()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = None
        for workload in args.workloads:
            flags, scenarios, needs_folder = WORKLOADS[workload]
            if needs_folder:
                folder = folder or write_fashion_folder(Path(tmp) / "data", range(10), 410, 26)
                flags = [*flags, "--data", str(folder)]
            alone: dict[str, float] = {}
            for scenario in scenarios:
                for setting, extra in SETTINGS.items():
                    output = Path(tmp) / f"run-{len(rows)}"
                    img_s = measure(scenario, flags, extra, output, args.epochs)
                    alone.setdefault(setting, img_s)  # the first scenario is "alone"
                    row = {"workload": workload, "scenario": scenario, "threads": setting, "img/s": img_s}
                    row["vs alone"] = img_s / alone[setting]
                    if setting != next(iter(SETTINGS)):
                        row["vs before"] = img_s / rows[-1]["img/s"]
                    print(row, flush=True)
                    rows.append(row)
    caption = (
        f"Training img/s per run, {args.epochs} epochs (median of all but the first), fixed size, no EMA; "
        f"fixed threads: --threads {FIXED}"
    )
    common.finish(run, args.json, [common.table("contention", rows, UNITS, caption)], machine)


if __name__ == "__main__":
    main()
