"""Eager CPU latency of our models against timm's and Hugging Face's, interleaved in one process.

    python benchmarks/latency.py [--batch-size 1] [--img-size 256 256] [--repeats 7] [--json out.json]

Each round times every implementation once (median of ``--iters`` calls after warm-up), in turn,
so that drifting machine load hits all of them alike; the table gives the median over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import transformers

import mobilevit
from common import print_table, write_json
from mobilevit.testing import hf_config


def time_call(fn, x: torch.Tensor, iters: int) -> float:
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--img-size", type=int, nargs=2, default=[256, 256])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per round")
    parser.add_argument("--models", nargs="*", default=mobilevit.list_models())
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    torch.manual_seed(0)
    x = torch.rand(args.batch_size, 3, *args.img_size)
    rows = []
    for name in args.models:
        impls = {
            "mobilevit": mobilevit.create_model(name).eval(),
            "timm": timm.create_model(name).eval(),
            "hf": transformers.MobileViTForImageClassification(hf_config(name)).eval(),
        }
        calls = {
            "mobilevit": impls["mobilevit"],
            "timm": impls["timm"],
            "hf": lambda t, m=impls["hf"]: m(pixel_values=t).logits,
        }
        results: dict[str, list[float]] = {k: [] for k in calls}
        with torch.inference_mode():
            for fn in calls.values():  # warm-up
                time_call(fn, x, 3)
            for _ in range(args.repeats):
                for key, fn in calls.items():
                    results[key].append(time_call(fn, x, args.iters))
        med = {k: statistics.median(v) * 1e3 for k, v in results.items()}
        rows.append(
            {
                "model": name,
                "mobilevit ms": f"{med['mobilevit']:.1f}",
                "timm ms": f"{med['timm']:.1f}",
                "hf ms": f"{med['hf']:.1f}",
                "vs timm": f"{med['mobilevit'] / med['timm']:.2f}x",
                "vs hf": f"{med['mobilevit'] / med['hf']:.2f}x",
            }
        )
    print(f"batch {args.batch_size}, {args.img_size[0]}x{args.img_size[1]}, {torch.get_num_threads()} threads, fp32")
    print_table(rows, list(rows[0]))
    write_json(args.json, rows)


if __name__ == "__main__":
    main()
