"""Where ONNX Runtime spends its time: kernel time per op type for our export, timm's and our int8.

    python benchmarks/ort_profile.py [--model mobilevit_s] [--runs 30] [--threads 2]
                                     [--json benchmarks/results/ort_profile.json]

Each graph runs ``--runs`` times in a profiling session (ONNX Runtime's own profiler, after its graph
optimisations, so the op types are the fused kernels it really runs: Conv with BatchNorm folded,
QuickGelu for SiLU, QLinearConv...). The table gives milliseconds per run and op type; the kernel
times add up to a little more than the wall-clock latency, since profiling adds a small cost to each
kernel. It shows which part of the network a faster export or int8 can still shrink and which is
already at the machine's arithmetic limit (the convolutions and linears).

A second table splits each graph's time into data movement (transposes, reshapes, slices, layout
reorders: what a better export can remove) and arithmetic (every other kernel: what it cannot, short
of a faster kernel or less arithmetic). Ours against timm's arithmetic alone is the best ratio any
export of the same network can reach under ONNX Runtime; int8's integer Conv/Gemm kernels alone
against half of fp32 bound the int8 speed-up the same way.
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import torch

import common
from mobilevit.export.bench import CALIBRATION_IMAGES, peer_model
from mobilevit.export.onnx import export_onnx, quantize_onnx
from mobilevit.models.factory import create_model
from mobilevit.testing import structured_images

# Ops that only move data; every other op type computes something.
LAYOUT_OPS = frozenset(
    {"Transpose", "Reshape", "Slice", "Squeeze", "Unsqueeze", "Split", "Concat", "Flatten", "Identity", "Expand",
     "Gather", "ReorderInput", "ReorderOutput"}
)  # fmt: skip
INTEGER_OPS = frozenset({"QLinearConv", "QGemm", "QLinearMatMul", "MatMulIntegerToFloat", "ConvInteger"})
BOUNDS_UNITS = {"data movement": "ms", "arithmetic": "ms", "total": "ms"}
BOUNDS_UNITS |= {"arithmetic / timm total": "ratio", "integer Conv/Gemm / ours fp32 total": "ratio"}


def kernel_ms_per_op(path: Path, x: torch.Tensor, runs: int, threads: int) -> dict[str, float]:
    """Milliseconds per run spent in each op type's kernels, from an ONNX Runtime profile."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            totals[event["args"]["op_name"]] += event["dur"] / 1e3 / runs  # microseconds -> ms per run
    return dict(totals)


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mobilevit_s")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=14, help="op types shown (the rest are summed)")
    common.add_json_arg(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = common.measured_on()

    x = structured_images(1, 256, 256)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours = export_onnx(create_model(args.model).eval(), work / "ours.onnx", x)
        graphs = {
            "ours fp32": ours,
            "timm fp32": export_onnx(peer_model("timm", args.model), work / "timm.onnx", x),
            "ours int8": quantize_onnx(ours, work / "int8.onnx", structured_images(CALIBRATION_IMAGES, 256, 256, 5)),
        }
        profiles = {key: kernel_ms_per_op(path, x, args.runs, args.threads) for key, path in graphs.items()}

    ranked = collections.Counter()
    for profile in profiles.values():
        ranked.update(profile)
    shown = [op for op, _ in ranked.most_common(args.top)]
    rows = [{"op": op, **{k: p.get(op, 0.0) for k, p in profiles.items()}} for op in shown]
    rows.append({"op": "other", **{k: sum(v for op, v in p.items() if op not in shown) for k, p in profiles.items()}})
    rows.append({"op": "total", **{k: sum(p.values()) for k, p in profiles.items()}})
    where = f"{args.model}, batch 1, 256x256, {args.threads} threads, {args.runs} profiled runs"
    split = bounds(profiles)
    tables = [
        common.table("kernels", rows, dict.fromkeys(profiles, "ms"), f"{where}: kernel ms per run and op type"),
        common.table("bounds", split, BOUNDS_UNITS, f"{where}: data movement against arithmetic, kernel ms per run"),
    ]
    common.finish(run, args.json, tables, machine)


def bounds(profiles: dict[str, dict[str, float]]) -> list[dict[str, object]]:
    """Per graph: data-movement ms, arithmetic ms, total, and the arithmetic against timm's total (the
    best ratio with no data movement at all) and, for int8, its integer kernels against fp32's total."""
    timm_total = sum(profiles["timm fp32"].values())
    fp32_total = sum(profiles["ours fp32"].values())
    rows = []
    for key, profile in profiles.items():
        layout = sum(ms for op, ms in profile.items() if op in LAYOUT_OPS)
        total = sum(profile.values())
        integer = sum(ms for op, ms in profile.items() if op in INTEGER_OPS)
        rows.append(
            {
                "graph": key,
                "data movement": layout,
                "arithmetic": total - layout,
                "total": total,
                "arithmetic / timm total": (total - layout) / timm_total,
                "integer Conv/Gemm / ours fp32 total": integer / fp32_total if integer else None,
            }
        )
    return rows


if __name__ == "__main__":
    main()
