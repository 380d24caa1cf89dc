"""The phone path on this CPU: ExecuTorch and LiteRT (both on XNNPACK, the CPU backend phones run) against
ONNX Runtime and against timm's model converted the same way, in fp32 and int8.

    python benchmarks/phone.py [--models ...] [--threads 2] [--json benchmarks/results/phone.json]

For each model and precision every file is built first, then all are timed interleaved in one process,
round after round (medians): ours on ONNX Runtime, ExecuTorch and LiteRT, and timm's on ExecuTorch and
LiteRT. timm's model has random weights like ours (its default init zeroes the last BatchNorm scale of
each residual block, and LiteRT's converter then deletes those blocks) and is lowered by each runtime's
standard recipe; MobileViTv3 has no timm model. *partitions* and *outside* say where each file's ops run
(:class:`mobilevit.export.xnnpack.Placement`): one XNNPACK partition and nothing outside is the goal.
int8 is static post-training quantization calibrated on structured images, the same for every runtime.

The second table puts each model's fp16 files (``--precision fp16``: ONNX and LiteRT) beside its fp32 ones,
timed interleaved in their own run: latency, file size and the largest difference from PyTorch's logits.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

# Before torch loads: its OpenMP workers, woken by the exports, otherwise spin on a core in this process
# while the other runtimes' threads run (see web.py; ONNX Runtime read a few percent slow here without it).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

import common
from mobilevit import create_model
from mobilevit.data.synthetic import structured_images
from mobilevit.export.bench import PEER_MODELS, peer_model, time_interleaved
from mobilevit.export.executorch import ExecuTorchRunner, export_executorch
from mobilevit.export.litert import LiteRTRunner, export_litert
from mobilevit.export.onnx import OnnxRunner, export_onnx, quantize_onnx
from mobilevit.testing import randomize_

MODELS = ["mobilevit_s", "mobilevit_xs", "mobilevit_xxs", "mobilevitv2_050", "mobilevitv2_100", "mobilevitv3_xs"]
CALIBRATION_IMAGES = 16
UNITS = {"median ms": "ms", "vs ONNX Runtime": "ratio", "vs timm": "ratio", "partitions": "count", "MB": "rate"}
UNITS |= {"outside": "text", "timm partitions": "count", "note": "text"}
FP16_UNITS = {"median ms": "ms", "vs fp32": "ratio", "MB": "rate", "max abs diff": "error", "same top-1": "text"}


def build(model: torch.nn.Module, runtime: str, example: torch.Tensor, calibration, workdir: Path, ours: bool):
    """(runner, placement or None, file) of ``model`` on ``runtime``; int8 when ``calibration`` is given."""
    int8 = calibration is not None
    if runtime == "onnxruntime":
        path = export_onnx(model, workdir / "model.onnx", example)
        if int8:
            path = quantize_onnx(path, workdir / "model-int8.onnx", calibration)
        return OnnxRunner(path, threads=torch.get_num_threads()), None, path
    if runtime == "executorch":
        path, where = export_executorch(
            model, workdir / "model.pte", example, int8=int8, calibration=calibration, rewrite=ours
        )
        return ExecuTorchRunner(path), where, path
    path = export_litert(model, workdir / "model.tflite", example, calibration, rewrite=ours)
    runner = LiteRTRunner(path, threads=torch.get_num_threads())
    return runner, runner.placement(), path


def measure(name: str, precision: str, size: tuple[int, int], rounds: int, iters: int, tmp: Path) -> list[dict]:
    """One row per (implementation, runtime) of ``name`` at ``precision``, all timed in one interleaved run."""
    example = structured_images(1, *size)
    calibration = structured_images(CALIBRATION_IMAGES, *size, seed=5) if precision == "int8" else None
    models = {"mobilevit": randomize_(create_model(name)).eval()}
    entries = [("mobilevit", runtime) for runtime in ("onnxruntime", "executorch", "litert")]
    if name in PEER_MODELS:
        models["timm"] = peer_model("timm", name)
        entries += [("timm", runtime) for runtime in ("executorch", "litert")]
    runners, facts, notes = {}, {}, {}
    for impl, runtime in entries:
        workdir = tmp / f"{name}-{precision}-{impl}-{runtime}"
        workdir.mkdir()
        try:
            run, where, path = build(models[impl], runtime, example, calibration, workdir, ours=impl == "mobilevit")
        except Exception as error:  # a peer that does not convert is a finding, not a crash
            if impl == "mobilevit":
                raise
            notes[impl, runtime] = f"does not convert: {str(error).splitlines()[0][:120]}"
            continue
        runners[impl, runtime] = run
        facts[impl, runtime] = (where, path.stat().st_size / 1e6)
    times = time_interleaved(runners, example, rounds, iters)
    medians = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    rows = []
    for impl, runtime in entries:
        key = (impl, runtime)
        if key not in medians:
            rows.append({"model": name, "precision": precision, "impl": impl, "runtime": runtime, "note": notes[key]})
            continue
        where, size_mb = facts[key]
        timm = medians.get(("timm", runtime))
        rows.append(
            {
                "model": name,
                "precision": precision,
                "impl": impl,
                "runtime": runtime,
                "median ms": round(medians[key], 2),
                "vs ONNX Runtime": medians[key] / medians["mobilevit", "onnxruntime"],
                "vs timm": medians[key] / timm if impl == "mobilevit" and timm else None,
                "partitions": where.partitions if where else None,
                "outside": ", ".join(f"{op} x{n}" for op, n in where.outside.items()) or "none" if where else None,
                "MB": round(size_mb, 2),
                "note": notes.get(("timm", runtime)) if impl == "mobilevit" else None,
            }
        )
        print(rows[-1], flush=True)
    return rows


def measure_fp16(name: str, size: tuple[int, int], rounds: int, iters: int, tmp: Path) -> list[dict]:
    """fp32 and fp16 files of ``name`` on ONNX Runtime and LiteRT, timed interleaved in one run."""
    model = randomize_(create_model(name)).eval()
    example = structured_images(1, *size)
    with torch.no_grad():
        expected = model(example)
    runners, files = {}, {}
    for runtime in ("onnxruntime", "litert"):
        for precision in ("fp32", "fp16"):
            path = tmp / f"{name}-{precision}.{'onnx' if runtime == 'onnxruntime' else 'tflite'}"
            fp16 = precision == "fp16"
            if runtime == "onnxruntime":
                runner = OnnxRunner(export_onnx(model, path, example, fp16=fp16), threads=torch.get_num_threads())
            else:
                runner = LiteRTRunner(export_litert(model, path, example, fp16=fp16), threads=torch.get_num_threads())
            runners[runtime, precision], files[runtime, precision] = runner, path
    times = time_interleaved(runners, example, rounds, iters)
    medians = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    rows = []
    for (runtime, precision), run in runners.items():
        got = run(example)
        rows.append(
            {
                "model": name,
                "runtime": runtime,
                "precision": precision,
                "median ms": round(medians[runtime, precision], 2),
                "vs fp32": medians[runtime, precision] / medians[runtime, "fp32"],
                "MB": round(files[runtime, precision].stat().st_size / 1e6, 2),
                "max abs diff": (got - expected).abs().max().item(),
                "same top-1": "yes" if got.argmax(1).item() == expected.argmax(1).item() else "no",
            }
        )
        print(rows[-1], flush=True)
    return rows


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's bars, checked on this run: ExecuTorch and LiteRT within 1.3x of ONNX Runtime, LiteRT at
    most 0.95x timm's, every file one XNNPACK partition."""
    ours = [r for r in rows if r["impl"] == "mobilevit" and r["runtime"] != "onnxruntime" and "median ms" in r]
    worst = max(ours, key=lambda r: r["vs ONNX Runtime"])
    litert = [r for r in ours if r["runtime"] == "litert" and r["vs timm"] is not None]
    split = [r for r in ours if r["partitions"] != 1 or r["outside"] != "none"]
    split_names = [f"{r['model']} {r['precision']} {r['runtime']}" for r in split]
    lines = [
        f"slowest against ONNX Runtime: {worst['model']} {worst['precision']} {worst['runtime']} "
        f"{worst['vs ONNX Runtime']:.2f}x (bar: 1.30x)",
        "files split or with ops outside XNNPACK: " + (", ".join(split_names) or "none"),
    ]
    if litert:
        slowest = max(litert, key=lambda r: r["vs timm"])
        worst_timm = f"{slowest['model']} {slowest['precision']} {slowest['vs timm']:.3f}x"
        lines.append(f"LiteRT against timm's, worst: {worst_timm} (bar: 0.95x)")
    return lines


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=MODELS)
    parser.add_argument("--precisions", nargs="*", default=["fp32", "int8"], choices=["fp32", "int8"])
    parser.add_argument("--fp16-models", nargs="*", default=MODELS[:3] + MODELS[4:5])
    parser.add_argument("--img-size", type=int, nargs=2, default=[256, 256])
    common.add_timing_args(parser)
    args = common.parse_timing_args(parser)
    machine = common.measured_on()
    size = tuple(args.img_size)
    rows, fp16_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            for precision in args.precisions:
                rows += measure(name, precision, size, args.rounds, args.iters, Path(tmp))
        for name in args.fp16_models:
            fp16_rows += measure_fp16(name, size, args.rounds, args.iters, Path(tmp))
    caption = (
        f"Batch 1, {size[0]}x{size[1]}, {args.rounds} interleaved rounds of {args.iters} calls per model and "
        "precision, medians; ratios are our latency over ONNX Runtime's and over timm's on the same runtime"
    )
    fp16_caption = (
        f"Batch 1, {size[0]}x{size[1]}, fp32 and fp16 files of each model timed interleaved in one run "
        f"({args.rounds} rounds of {args.iters} calls, medians); the difference is from PyTorch's logits on "
        "a structured image, random weights"
    )
    tables = [
        common.table("phone", rows, UNITS, caption, notes=verdicts(rows)),
        common.table("fp16", fp16_rows, FP16_UNITS, fp16_caption),
    ]
    common.finish(run, args.json, tables, machine)


if __name__ == "__main__":
    main()
