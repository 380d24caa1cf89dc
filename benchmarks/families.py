"""Pick a model by the accuracy/latency trade-off: every classifier of v1, v2 and v3 with its
parameters, MACs, published ImageNet top-1 and latency on this machine.

    python benchmarks/families.py [--models ...] [--backends eager optimized onnxruntime] [--threads 2]
                                  [--json benchmarks/results/families.json]

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

import common
import mobilevit
from mobilevit.export.bench import build_runner, time_interleaved
from mobilevit.testing import structured_images

BACKENDS = ("eager", "optimized", "onnxruntime")


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=mobilevit.list_models("mobilevit*", task="classification"))
    parser.add_argument("--backends", nargs="*", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--img-size", type=int, nargs=2, default=[256, 256])
    common.add_timing_args(parser)
    args = common.parse_timing_args(parser)
    machine = common.measured_on()

    size = tuple(args.img_size)
    rows = {name: common.model_facts(name, size) for name in args.models}
    x = structured_images(1, *size)
    for backend in args.backends:
        with tempfile.TemporaryDirectory() as tmp:
            runners = {}
            for name in args.models:
                (Path(tmp) / name).mkdir()
                runners[name] = build_runner(mobilevit.create_model(name), backend, x, Path(tmp) / name)
            times = time_interleaved(runners, x, args.rounds, args.iters)
        for name, values in times.items():
            rows[name][f"{backend} ms"] = 1000 * statistics.median(values)
        print(backend, {name: round(rows[name][f"{backend} ms"], 2) for name in args.models}, flush=True)
    units = common.FACT_UNITS | {f"{backend} ms": "ms" for backend in args.backends}
    caption = (
        f"Batch 1, {size[0]}x{size[1]}, fp32, MACs at that size; per backend every model timed interleaved, "
        f"{args.rounds} rounds of {args.iters} calls, medians"
    )
    common.finish(run, args.json, [common.table("families", list(rows.values()), units, caption)], machine)


if __name__ == "__main__":
    main()
