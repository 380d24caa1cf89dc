"""Latency of every model on every backend, against timm and Hugging Face where they can follow.

    python benchmarks/backends.py [--models ...] [--backends ...] [--threads 2]
                                  [--json benchmarks/results/backends.json]

Each (model, backend) pair is one ``mobilevit bench`` run (``mobilevit.export.bench.bench``): ours and
the peers in one process, interleaved, medians over rounds. Peers: timm and Hugging Face in eager
mode (for ``eager`` and ``optimized``), timm alone on the export backends (its ONNX export is the
yardstick to beat; Hugging Face's exports are slower still), timm quantized the same way for
``litert-int8``, none for ``int8``. Each int8 row is also compared with our own fp32 row on the same
runtime (ONNX Runtime, LiteRT). ``optimized`` also runs our eager model beside it: the
script says whether ``optimize_for_inference`` beat it for every model on this CPU, as it must.
"""

from __future__ import annotations

import argparse

import common
import mobilevit
from mobilevit.export.bench import BENCH_BACKENDS, bench

PEERS = {"eager": ("timm", "hf"), "optimized": ("timm", "hf"), "compile": ("timm",), "onnxruntime": ("timm",)}
PEERS |= {"executorch": ("timm",), "int8": (), "litert": ("timm",), "litert-int8": ("timm",)}
FP32_OF = {"int8": "onnxruntime", "litert-int8": "litert"}  # each int8 backend's fp32 counterpart
UNITS = {"median ms": "ms", "p90 ms": "ms", "img/s": "rate", "GFLOP/s": "rate", "% fp32 peak": "rate"}
UNITS |= {"timm ms": "ms", "vs timm": "ratio", "hf ms": "ms", "vs hf": "ratio", "vs our eager": "ratio"}
UNITS |= {"vs our fp32": "ratio"}


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=mobilevit.list_models("mobilevit_*", task="classification"))
    parser.add_argument("--backends", nargs="*", default=list(BENCH_BACKENDS), choices=BENCH_BACKENDS)
    parser.add_argument("--img-size", type=int, nargs=2, default=[256, 256])
    common.add_timing_args(parser)
    args = common.parse_timing_args(parser)
    machine = common.measured_on()

    size = tuple(args.img_size)
    rows = []
    for name in args.models:
        fp32_ms = {}
        for backend in args.backends:
            result = bench(
                name,
                backend,
                img_size=size,
                compare=PEERS[backend],
                rounds=args.rounds,
                iters=args.iters,
                peak_gflops=machine["fp32_matmul_peak_gflops"],
            )
            ours = result[0]
            fp32_ms[backend] = ours["median_ms"]
            fp32 = fp32_ms.get(FP32_OF.get(backend))
            peers = {r["impl"]: r for r in result[1:] if r["impl"] != "mobilevit"}
            eager = next((r for r in result[1:] if r["impl"] == "mobilevit"), None)  # optimized's baseline
            rows.append(
                {
                    "model": name,
                    "backend": backend,
                    "median ms": ours["median_ms"],
                    "p90 ms": ours["p90_ms"],
                    "img/s": ours["img_per_s"],
                    "GFLOP/s": ours["gflop_per_s"],
                    "% fp32 peak": ours["peak_pct"],
                    "timm ms": peers["timm"]["median_ms"] if "timm" in peers else None,
                    "vs timm": peers["timm"]["ours_over_this"] if "timm" in peers else None,
                    "hf ms": peers["hf"]["median_ms"] if "hf" in peers else None,
                    "vs hf": peers["hf"]["ours_over_this"] if "hf" in peers else None,
                    "vs our eager": eager["ours_over_this"] if eager else None,
                    "vs our fp32": ours["median_ms"] / fp32 if fp32 else None,
                }
            )
            print(rows[-1], flush=True)
    facts = [common.model_facts(name, size) for name in args.models]
    caption = (
        f"Batch 1, {size[0]}x{size[1]}, fp32 unless int8, {args.rounds} interleaved rounds of {args.iters} calls, "
        "medians; ratios are our latency over theirs"
    )
    tables = [
        common.table("models", facts, common.FACT_UNITS, f"The models, MACs at {size[0]}x{size[1]}"),
        common.table("latency", rows, UNITS, caption, notes=optimized_verdict(rows)),
    ]
    common.finish(run, args.json, tables, machine)


def optimized_verdict(rows: list[dict]) -> list[str]:
    """Whether ``optimize_for_inference`` beat our eager model for every model, as it must on every CPU."""
    ratios = {row["model"]: row["vs our eager"] for row in rows if row["vs our eager"] is not None}
    if not ratios:
        return []
    slower = [name for name, ratio in ratios.items() if ratio > 1]
    verdict = f"SLOWER than eager for {', '.join(slower)}" if slower else "faster than eager for every model"
    each = ", ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios.items())
    return [f"`optimize_for_inference` on this CPU: {verdict} ({each})"]


if __name__ == "__main__":
    main()
