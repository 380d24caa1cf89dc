"""Pick a model by the accuracy/latency trade-off: every classifier of v1, v2 and v3 with its
parameters, MACs, published ImageNet top-1 and latency on this machine.

    python benchmarks/families.py [--models ...] [--backends eager optimized onnxruntime] [--threads 2]

Latency: batch 1, 256x256, fp32, each backend's runners built as ``mobilevit bench`` builds them
(``mobilevit.export.bench.build_runner``) and timed interleaved across all models, round after
round (``time_interleaved``), so that the machine's drift touches every row alike; the median per
model. MACs are counted by ``torch.utils.flop_counter`` at 256x256.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

import mobilevit
from common import add_timing_args, measured_on, parse_timing_args, print_table, write_json
from mobilevit.export.bench import build_runner, time_interleaved
from mobilevit.export.machine import describe
from mobilevit.models.summary import count_macs, count_params
from mobilevit.testing import structured_images

# ImageNet-1k top-1 (%) at 256x256 as published, from ../shared/reference/mobilevit.md.
PUBLISHED_TOP1 = {
    "mobilevit_xxs": 69.0,
    "mobilevit_xs": 74.8,
    "mobilevit_s": 78.4,
    "mobilevitv2_050": 70.18,
    "mobilevitv2_075": 75.56,
    "mobilevitv2_100": 78.09,
    "mobilevitv2_125": 79.65,
    "mobilevitv2_150": 80.38,
    "mobilevitv2_175": 80.84,
    "mobilevitv2_200": 81.17,
    "mobilevitv3_xxs": 70.98,
    "mobilevitv3_xs": 76.7,
    "mobilevitv3_s": 79.3,
}
BACKENDS = ("eager", "optimized", "onnxruntime")


def describe_row(name: str, size: tuple[int, int]) -> dict[str, object]:
    model = mobilevit.create_model(name).eval()
    x = torch.zeros(1, 3, *size)
    return {
        "model": name,
        "params (M)": f"{count_params(model) / 1e6:.2f}",
        "GMACs": f"{count_macs(model, x) / 1e9:.2f}",
        "top-1 (published)": PUBLISHED_TOP1.get(name, "-"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=mobilevit.list_models("mobilevit*", task="classification"))
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--img-size", type=int, nargs=2, default=[256, 256])
    add_timing_args(parser)
    args = parse_timing_args(parser)
    machine = measured_on()

    size = tuple(args.img_size)
    rows = {name: describe_row(name, size) for name in args.models}
    x = structured_images(1, *size)
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as tmp:
            runners = {}
            for name in args.models:
                (Path(tmp) / name).mkdir()
                runners[name] = build_runner(mobilevit.create_model(name), backend, x, Path(tmp) / name)
            times = time_interleaved(runners, x, args.rounds, args.iters)
        for name, values in times.items():
            rows[name][f"{backend} ms"] = round(1000 * statistics.median(values), 2)
        print(backend, {name: rows[name][f"{backend} ms"] for name in args.models}, flush=True)
    rows = list(rows.values())
    print(f"\nbatch 1, {size[0]}x{size[1]}, fp32, interleaved, on {describe(machine)}\n")
    print_table(rows, list(rows[0]))
    write_json(args.json, rows, machine)


if __name__ == "__main__":
    main()
