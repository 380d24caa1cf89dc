"""int8 post-training quantization: accuracy on Fashion-MNIST and speed on ONNX Runtime.

    python benchmarks/int8.py [--checkpoint runs/fashion_mnist/model] [--calibration-images 256]
                              [--speed-model mobilevit_s] [--threads 2] [--json out.json]

1. Accuracy: the Fashion-MNIST model of the quickstart (``runs/fashion_mnist/model``), exported to
   ONNX in fp32 and in int8 (static, calibrated on training images), both run by ONNX Runtime on the
   10,000 test images: top-1 of each and the drop.
2. Speed: ``--speed-model`` at 256x256, batch 1: fp32 ONNX Runtime against int8 ONNX Runtime,
   interleaved in one process (``mobilevit.export.bench``).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from common import add_timing_args, parse_timing_args, print_table, write_json
from mobilevit.data.calibration import calibration_images
from mobilevit.data.datasets import FASHION_MNIST, fashion_mnist
from mobilevit.data.transforms import TransformedDataset, eval_transform
from mobilevit.engine.evaluate import load_for_eval
from mobilevit.export.bench import build_runner, time_interleaved
from mobilevit.export.onnx import OnnxRunner, export_onnx, quantize_onnx
from mobilevit.models.factory import create_model
from mobilevit.testing import structured_images


def top1(run, loader) -> float:
    """Top-1 of ``run``, fed one image at a time (the exports have a static batch of 1)."""
    correct = total = 0
    for images, labels in loader:
        predicted = torch.cat([run(image).argmax(1) for image in images.split(1)])
        correct += (predicted == labels).sum().item()
        total += len(labels)
    return correct / total


def accuracy(checkpoint: str, n_calibration: int, workdir: Path) -> dict:
    model, _ = load_for_eval(checkpoint)
    size = model.pretrained_cfg["input_size"][-1]
    # static shapes: at 32x32 the last stage's 1x1 map is resized, which a graph traced at a larger size lacks
    fp32 = export_onnx(model, workdir / "fp32.onnx", structured_images(1, size, size))
    calibration = calibration_images(FASHION_MNIST, n_calibration, (size, size))
    int8 = quantize_onnx(fp32, workdir / "int8.onnx", calibration)
    test = TransformedDataset(fashion_mnist(train=False), eval_transform(size))
    loader = torch.utils.data.DataLoader(test, batch_size=256, num_workers=2)
    with torch.inference_mode():
        results = {
            "pytorch fp32": top1(model.eval(), loader),  # the reference the exports must reproduce
            "onnxruntime fp32": top1(OnnxRunner(fp32), loader),
            "onnxruntime int8": top1(OnnxRunner(int8), loader),
        }
    return {"img_size": size, "calibration_images": n_calibration, **results}


def speed(name: str, rounds: int, iters: int, workdir: Path) -> dict:
    model = create_model(name).eval()
    x = structured_images(1, 256, 256)
    runners = {backend: build_runner(model, backend, x, workdir / backend) for backend in ("onnxruntime", "int8")}
    times = time_interleaved(runners, x, rounds, iters)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    return {"model": name, "fp32 ms": round(med["onnxruntime"], 2), "int8 ms": round(med["int8"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="runs/fashion_mnist/model")
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--speed-model", default="mobilevit_s")
    add_timing_args(parser)
    args = parse_timing_args(parser)
    with tempfile.TemporaryDirectory() as tmp:
        for sub in ("acc", "onnxruntime", "int8"):
            (Path(tmp) / sub).mkdir()
        acc = accuracy(args.checkpoint, args.calibration_images, Path(tmp) / "acc")
        fast = speed(args.speed_model, args.rounds, args.iters, Path(tmp))
    drop = 100 * (acc["onnxruntime fp32"] - acc["onnxruntime int8"])
    print(
        f"Fashion-MNIST test top-1, {args.checkpoint} at {acc['img_size']}x{acc['img_size']}, "
        f"int8 calibrated on {args.calibration_images} training images"
    )
    print_table(
        [
            {k: f"{100 * v:.2f}%" for k, v in acc.items() if k.startswith(("pytorch", "onnx"))}
            | {"int8 drop": f"{drop:.2f} points"}
        ],
        ["pytorch fp32", "onnxruntime fp32", "onnxruntime int8", "int8 drop"],
    )
    print(f"\n{args.speed_model}, batch 1, 256x256, {torch.get_num_threads()} threads")
    fast["int8 speed-up"] = f"{fast['fp32 ms'] / fast['int8 ms']:.2f}x"
    print_table([fast], list(fast))
    write_json(args.json, {"accuracy": acc, "int8_drop_points": drop, "speed": fast})


if __name__ == "__main__":
    main()
