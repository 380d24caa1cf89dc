"""Latency of every model on every backend, against timm and Hugging Face where they can follow.

    python benchmarks/backends.py [--models ...] [--backends ...] [--threads 2] [--json out.json]

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

import mobilevit
from common import add_timing_args, measured_on, parse_timing_args, print_table, write_json
from mobilevit.export.bench import BENCH_BACKENDS, bench
from mobilevit.export.machine import describe

PEERS = {"eager": ("timm", "hf"), "optimized": ("timm", "hf"), "compile": ("timm",), "onnxruntime": ("timm",)}
PEERS |= {"executorch": ("timm",), "int8": (), "litert": ("timm",), "litert-int8": ("timm",)}
FP32_OF = {"int8": "onnxruntime", "litert-int8": "litert"}  # each int8 backend's fp32 counterpart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=mobilevit.list_models("mobilevit_*", task="classification"))
    parser.add_argument("--backends", nargs="*", default=list(BENCH_BACKENDS), choices=BENCH_BACKENDS)
    parser.add_argument("--img-size", type=int, nargs=2, default=[256, 256])
    add_timing_args(parser)
    args = parse_timing_args(parser)
    machine = measured_on()

    rows = []
    for name in args.models:
        fp32_ms = {}
        for backend in args.backends:
            size = tuple(args.img_size)
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
                    "timm ms": peers["timm"]["median_ms"] if "timm" in peers else "",
                    "vs timm": f"{peers['timm']['ours_over_this']:.2f}x" if "timm" in peers else "",
                    "hf ms": peers["hf"]["median_ms"] if "hf" in peers else "",
                    "vs hf": f"{peers['hf']['ours_over_this']:.2f}x" if "hf" in peers else "",
                    "vs our eager": f"{eager['ours_over_this']:.2f}x" if eager else "",
                    "vs our fp32": f"{ours['median_ms'] / fp32:.2f}x" if fp32 else "",
                }
            )
            print(rows[-1], flush=True)
    h, w = args.img_size
    print(f"\nbatch 1, {h}x{w}, fp32 unless int8; ratios: our latency / theirs; on {describe(machine)}")
    print_table(rows, list(rows[0]))
    ratios = {row["model"]: row["vs our eager"] for row in rows if row["vs our eager"]}
    if ratios:
        slower = [name for name, ratio in ratios.items() if float(ratio.rstrip("x")) > 1]
        verdict = f"SLOWER than eager for {', '.join(slower)}" if slower else "faster than eager for every model"
        print(f"\noptimize_for_inference on this CPU: {verdict} ({', '.join(f'{k} {v}' for k, v in ratios.items())})")
    write_json(args.json, rows, machine)


if __name__ == "__main__":
    main()
