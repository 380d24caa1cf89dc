"""int8 post-training quantization: accuracy on Fashion-MNIST and speed, on ONNX Runtime for the
portable weights (7-bit, the default) and full-range 8-bit weights, on this CPU and on an x86 CPU
without VNNI, and in LiteRT's interpreter.

    python benchmarks/int8.py [--checkpoint runs/fashion_mnist/model] [--calibration-images 256]
                              [--emulated-images 10000] [--speed-model mobilevit_s] [--threads 2]
                              [--json benchmarks/results/int8.json]

1. Accuracy: the Fashion-MNIST model of the quickstart (``runs/fashion_mnist/model``), exported to
   ONNX in fp32 and in int8 both ways (static, calibrated on training images), run by ONNX Runtime on
   the 10,000 test images, and to LiteRT in fp32 and int8 (the same calibration images), run by its
   interpreter; here, and also on an emulated AMD EPYC-Rome (AVX2, no VNNI; QEMU user mode,
   ``apt-get install qemu-user``) for the first ``--emulated-images`` of them: top-1 of each and the
   drop from fp32. Full-range weights are exact only with VNNI or on ARM: on an x86 CPU without VNNI
   ONNX Runtime's 16-bit pair sums overflow (``mobilevit.export.onnx.PORTABLE_WEIGHT_MAX``).
2. Speed: ``--speed-model`` at 256x256, batch 1: fp32 ONNX Runtime against both int8 files, and
   LiteRT fp32 against int8, interleaved in one process on this CPU
   (``mobilevit.export.bench.time_interleaved``).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

import torch

import common
from mobilevit.data.calibration import calibration_images
from mobilevit.data.classification import FASHION_MNIST, fashion_mnist
from mobilevit.data.transforms import TransformedDataset, eval_transform
from mobilevit.export import machine
from mobilevit.export.bench import CALIBRATION_IMAGES, time_interleaved
from mobilevit.export.litert import LiteRTRunner, export_litert
from mobilevit.export.onnx import Int8PortabilityError, OnnxRunner, export_onnx, quantize_onnx
from mobilevit.models.factory import create_model, from_pretrained
from mobilevit.testing import CPU_WITHOUT_VNNI, run_on_emulated_cpu, structured_images

INT8 = {"int8 portable": True, "int8 full range": False}  # name -> quantize_onnx(portable=...)
FP32_OF = {"int8 portable": "fp32", "int8 full range": "fp32", "litert int8": "litert fp32"}


def exports(model: torch.nn.Module, size: int, calibration: torch.Tensor, workdir: Path) -> dict[str, Path]:
    """fp32 and both int8 ONNX files of ``model`` at size x size (static shapes)."""
    fp32 = export_onnx(model, workdir / "fp32.onnx", structured_images(1, size, size))
    files = {"fp32": fp32}
    for name, portable in INT8.items():
        files[name] = quantize_onnx(fp32, workdir / f"{name.replace(' ', '-')}.onnx", calibration, portable=portable)
    return files


def litert_exports(model: torch.nn.Module, size: int, calibration: torch.Tensor, workdir: Path) -> dict[str, Path]:
    """The fp32 and the int8 ``.tflite`` files of ``model`` at size x size."""
    example = structured_images(1, size, size)
    return {
        "litert fp32": export_litert(model, workdir / "fp32.tflite", example),
        "litert int8": export_litert(model, workdir / "int8.tflite", example, calibration),
    }


def accuracy(checkpoint: str, n_calibration: int, n_emulated: int, workdir: Path) -> list[dict]:
    model = from_pretrained(checkpoint)
    size = model.pretrained_cfg["input_size"][-1]
    calibration = calibration_images(FASHION_MNIST, n_calibration, (size, size))
    test = TransformedDataset(fashion_mnist(train=False), eval_transform(size))
    # loaded before the LiteRT export, which imports JAX: JAX's threads and the loader's forks do not mix
    batches = list(torch.utils.data.DataLoader(test, batch_size=1000, num_workers=2))
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    files = exports(model, size, calibration, workdir) | litert_exports(model, size, calibration, workdir)
    with torch.inference_mode():
        here = {"pytorch fp32": torch.cat([model.eval()(batch).argmax(1) for batch in images.split(1000)])}
        for name, path in files.items():
            try:
                runner = _runner(path)
            except Int8PortabilityError:  # full-range weights on x86 without VNNI: rightly refused
                continue
            here[name] = torch.cat([runner(x).argmax(1) for x in images.split(1)])
    rows = [{"cpu": f"this one ({machine.isa_level()})", "images": len(labels), **_top1(here, labels)}]
    if n_emulated and shutil.which("qemu-x86_64") and machine.is_x86():
        subset, subset_labels = images[:n_emulated], labels[:n_emulated]
        emulated = {name: run_on_emulated_cpu(path, subset).argmax(1) for name, path in files.items()}
        cpu = f"emulated {CPU_WITHOUT_VNNI} (AVX2, no VNNI)"
        rows.append({"cpu": cpu, "images": len(subset), **_top1(emulated, subset_labels)})
    return rows


def _runner(path: Path) -> OnnxRunner | LiteRTRunner:
    runtime = LiteRTRunner if path.suffix == ".tflite" else OnnxRunner
    return runtime(path, threads=torch.get_num_threads())


def _top1(predictions: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, float]:
    """Top-1 of each file, and each int8 file's drop from its fp32 file (same runtime, same CPU)."""
    top1 = {name: (predicted == labels).float().mean().item() for name, predicted in predictions.items()}
    return top1 | {f"{name} drop": top1[fp32] - top1[name] for name, fp32 in FP32_OF.items() if name in top1}


def speed(name: str, rounds: int, iters: int, workdir: Path) -> dict:
    x = structured_images(1, 256, 256)
    model, calibration = create_model(name).eval(), structured_images(CALIBRATION_IMAGES, 256, 256, seed=5)
    files = exports(model, 256, calibration, workdir)
    files |= litert_exports(model, 256, calibration, workdir)
    runners = {key: _runner(path) for key, path in files.items()}
    times = time_interleaved(runners, x, rounds, iters)
    median = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    row = {"model": name} | {f"{key} ms": ms for key, ms in median.items()}
    return row | {f"{key} speed-up": median[fp32] / median[key] for key, fp32 in FP32_OF.items()}


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/fashion_mnist/model")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--emulated-images", type=int, default=10_000, help="0: skip the emulated CPU")
    parser.add_argument("--speed-model", default="mobilevit_s")
    common.add_timing_args(parser)
    args = common.parse_timing_args(parser)
    info = common.measured_on()
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("acc", "speed"):
            (Path(tmp) / sub).mkdir()
        acc = accuracy(args.checkpoint, args.calibration_images, args.emulated_images, Path(tmp) / "acc")
        fast = speed(args.speed_model, args.rounds, args.iters, Path(tmp) / "speed")
    columns = ["cpu", "images", "pytorch fp32", "fp32", *INT8, "litert fp32", "litert int8"]
    columns += [f"{name} drop" for name in FP32_OF]
    units = {"images": "count"} | {c: "points" if c.endswith("drop") else "fraction" for c in columns[2:]}
    acc_caption = (
        f"Fashion-MNIST test top-1 of {args.checkpoint}, int8 calibrated on {args.calibration_images} training "
        "images; a drop is the int8 file's loss against the fp32 file on the same runtime and CPU"
    )
    speed_units = {c: "ratio" if c.endswith("speed-up") else "ms" for c in fast if c != "model"}
    speed_caption = (
        f"{args.speed_model}, batch 1, 256x256, ONNX Runtime and LiteRT interleaved, {args.rounds} rounds of "
        f"{args.iters} calls, medians; a speed-up is the fp32 file's latency over the int8 file's on the same runtime"
    )
    tables = [
        common.table("accuracy", [{c: row.get(c) for c in columns} for row in acc], units, acc_caption),
        common.table("speed", [fast], speed_units, speed_caption),
    ]
    common.finish(run, args.json, tables, info)


if __name__ == "__main__":
    main()
