"""``mobilevit bench``: latency of one model on one backend, optionally against timm's and Hugging
Face's same model, run in the same process and interleaved so that machine load hits all alike.

Backends: ``eager`` (the model as built), ``optimized`` (:func:`optimize_for_inference`), ``compile``
(``torch.compile``), ``onnxruntime`` (an fp32 ONNX export), ``executorch`` (XNNPACK), ``litert``
(LiteRT's interpreter, XNNPACK), ``int8`` (a static int8 ONNX export on ONNX Runtime) and
``litert-int8`` (a static int8 LiteRT export). Peers run
on the same backend, except ``optimized``, which is ours alone: they run eagerly there, beside our own
eager model.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mobilevit.data.synthetic import structured_images
from mobilevit.export.executorch import ExecuTorchRunner, export_executorch
from mobilevit.export.litert import LiteRTRunner, export_litert
from mobilevit.export.machine import matmul_peak_gflops
from mobilevit.export.onnx import OnnxRunner, export_onnx, quantize_onnx
from mobilevit.export.optimize import optimize_for_inference
from mobilevit.models.factory import create_model
from mobilevit.models.mobilevit import MODEL_CONFIGS
from mobilevit.models.mobilevitv2 import V2_CONFIGS
from mobilevit.models.summary import count_macs
from mobilevit.testing import hf_config, hf_v2_config, randomize_

BENCH_BACKENDS = ("eager", "optimized", "compile", "onnxruntime", "executorch", "int8", "litert", "litert-int8")
PEERS = ("timm", "hf")
# What timm and Hugging Face implement: the v1 and v2 classifiers (neither has MobileViTv3 or our task models).
PEER_MODELS = (*MODEL_CONFIGS, *V2_CONFIGS)
CALIBRATION_IMAGES = 16  # for int8 timing only; accuracy is measured in benchmarks/int8.py
# Idle time before each runner's block of calls. ONNX Runtime's and OpenMP's worker threads spin for a
# while after a call; without the pause the previous runner's threads take cores from the first timed
# calls of the next, which puts noise into the timings.
SETTLE_S = 0.05

Runner = Callable[[torch.Tensor], torch.Tensor]


class _HFLogits(nn.Module):
    """Hugging Face's classifier behind our call signature: images in, logits out. v1 and v2 are
    separate classes there, each with its own config."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import transformers

        if name in V2_CONFIGS:
            self.model = transformers.MobileViTV2ForImageClassification(hf_v2_config(name))
        else:
            self.model = transformers.MobileViTForImageClassification(hf_config(name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def peer_model(peer: str, name: str) -> nn.Module:
    """timm's or Hugging Face's ``name`` (v1 or v2) with every weight random. Not their default init:
    timm zeroes the last BatchNorm scale of each residual block, and converters (LiteRT's) then remove
    those blocks from the file, which no trained model allows."""
    if peer == "timm":
        import timm

        return randomize_(timm.create_model(name)).eval()
    if peer == "hf":
        return randomize_(_HFLogits(name)).eval()
    raise ValueError(f"unknown peer {peer!r}; choose from {', '.join(PEERS)}")


def build_runner(model: nn.Module, backend: str, example: torch.Tensor, workdir: Path, ours: bool = True) -> Runner:
    """``model`` prepared for ``backend`` at the shape of ``example``, as a tensor-in tensor-out call;
    a peer's (``ours=False``) is lowered to ExecuTorch and LiteRT by the standard recipe, without our rewrites."""
    model = model.eval()
    if backend == "eager":
        return model
    if backend == "optimized":
        fast = optimize_for_inference(model)
        return lambda x: fast(x.contiguous(memory_format=torch.channels_last))
    if backend == "compile":
        return torch.compile(model)
    calibration = structured_images(CALIBRATION_IMAGES, *example.shape[-2:], seed=5) if "int8" in backend else None
    if backend in ("onnxruntime", "int8"):
        path = export_onnx(model, workdir / "model.onnx", example)
        if calibration is not None:
            path = quantize_onnx(path, workdir / "model-int8.onnx", calibration)
        return OnnxRunner(path, threads=torch.get_num_threads())
    if backend == "executorch":
        return ExecuTorchRunner(export_executorch(model, workdir / "model.pte", example, rewrite=ours)[0])
    if backend in ("litert", "litert-int8"):
        path = export_litert(model, workdir / "model.tflite", example, calibration, rewrite=ours)
        return LiteRTRunner(path, threads=torch.get_num_threads())
    raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BENCH_BACKENDS)}")


def time_interleaved(runners: dict[str, Runner], x: torch.Tensor, rounds: int, iters: int) -> dict[str, list[float]]:
    """Seconds per call of each runner: ``rounds`` rounds, each timing every runner ``iters`` times in
    turn, after a pause (see ``SETTLE_S``) and one untimed call that brings its weights back into cache."""
    times: dict[str, list[float]] = {key: [] for key in runners}
    with torch.inference_mode():
        for run in runners.values():  # warm-up: compilation, allocator, oneDNN weight reorders
            for _ in range(3):
                run(x)
        for _ in range(rounds):
            for key, run in runners.items():
                time.sleep(SETTLE_S)
                run(x)
                for _ in range(iters):
                    start = time.perf_counter()
                    run(x)
                    times[key].append(time.perf_counter() - start)
    return times


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def bench(
    name: str,
    backend: str = "eager",
    *,
    batch_size: int = 1,
    img_size: tuple[int, int] = (256, 256),
    compare: tuple[str, ...] = (),
    rounds: int = 7,
    iters: int = 10,
    peak_gflops: float | None = None,
) -> list[dict[str, Any]]:
    """One row per implementation: median and p90 latency, img/s, GFLOP/s and its share of the
    machine's fp32 matmul peak (``peak_gflops``, measured when not given), and ours over each row's
    latency: the peers' (``compare``) and, for ``optimized``, our own eager model's."""
    if backend not in BENCH_BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BENCH_BACKENDS)}")
    unknown = set(compare) - set(PEERS)
    if unknown:
        raise ValueError(f"unknown peer(s) {', '.join(sorted(unknown))}; choose from {', '.join(PEERS)}")
    model = create_model(name).eval()  # first, so that an unknown name is reported as such
    if compare and name not in PEER_MODELS:
        raise ValueError(
            f"cannot compare {name} with {', '.join(compare)}: timm and Hugging Face implement only the MobileViT "
            f"v1 and v2 classifiers; bench {name} without --compare"
        )
    x = structured_images(batch_size, *img_size)
    flops = 2 * count_macs(model, x)
    # optimize_for_inference is ours alone: the peers run eagerly beside it, and so does our own eager
    # model, the baseline it must beat on every CPU
    peer_backend = "eager" if backend == "optimized" else backend
    entries = [("mobilevit", backend, model)]
    if backend == "optimized":
        entries.append(("mobilevit", "eager", model))
    entries += [(peer, peer_backend, peer_model(peer, name)) for peer in compare]
    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for impl, impl_backend, network in entries:
            workdir = Path(tmp) / f"{impl}-{impl_backend}"
            workdir.mkdir()
            runners[impl, impl_backend] = build_runner(network, impl_backend, x, workdir, ours=impl == "mobilevit")
        times = time_interleaved(runners, x, rounds, iters)
    peak = peak_gflops or matmul_peak_gflops()
    ours = statistics.median(times["mobilevit", backend])
    rows = []
    for (impl, impl_backend), values in times.items():
        median = statistics.median(values)
        rows.append(
            {
                "impl": impl,
                "backend": impl_backend,
                "model": name,
                "batch": batch_size,
                "img_size": f"{img_size[0]}x{img_size[1]}",
                "median_ms": round(median * 1e3, 2),
                "p90_ms": round(_percentile(values, 90) * 1e3, 2),
                "img_per_s": round(batch_size / median, 1),
                "gflop_per_s": round(flops / median / 1e9, 1),
                "peak_pct": round(100 * flops / median / 1e9 / peak, 1),
                "ours_over_this": round(ours / median, 2),
            }
        )
    return rows
