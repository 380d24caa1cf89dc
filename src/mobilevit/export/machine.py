"""The machine a speed figure was measured on: CPU model, instruction set, threads and fp32 peak.

Latencies mean little without these: the same model's ratios differ between an AVX-512 CPU with
VNNI and one with AVX2 alone (fp32 peaks far apart, int8 kernels of another kind), so every
benchmark prints :func:`describe` with its table and writes :func:`machine_info` into its JSON.
"""

from __future__ import annotations

import platform
import time
from functools import cache
from pathlib import Path

import torch

VNNI_FLAGS = ("avx512_vnni", "avx_vnni")  # either gives x86 the u8 x s8 dot product without saturation


@cache
def _cpuinfo() -> dict[str, str]:
    """The first processor's fields in Linux's /proc/cpuinfo; empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    block = text.split("\n\n", 1)[0]
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in block.splitlines())}


def _capabilities() -> dict:
    """torch's cpuinfo-based capability table (torch >= 2.9); empty on older torch."""
    get = getattr(torch.cpu, "get_capabilities", None)
    return dict(get()) if get else {}


def cpu_name() -> str:
    """The CPU's model name as the OS reports it (what lscpu shows)."""
    return _capabilities().get("cpu_name") or _cpuinfo().get("model name") or platform.processor() or "unknown"


def isa_level() -> str:
    """The vector instruction set torch's CPU kernels run on (``AVX512``, ``AVX2``, ``DEFAULT``...)."""
    return torch.backends.cpu.get_cpu_capability()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def has_vnni() -> bool:
    """Whether this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI): without it, ONNX Runtime's u8 x s8
    integer kernels add pairs of products in 16 bits, which full-range int8 weights overflow."""
    # torch's table comes from CPUID, which also holds under an emulator; /proc/cpuinfo is the host's
    flags = _capabilities() or dict.fromkeys(_cpuinfo().get("flags", "").split(), True)
    return any(flags.get(flag) for flag in VNNI_FLAGS)


def matmul_peak_gflops(size: int = 1024, repeats: int = 20) -> float:
    """This machine's measured fp32 matmul throughput: the best of ``repeats`` square products,
    through both ``torch.mm`` and oneDNN (which may be the faster BLAS here), as the yardstick for
    how much of the CPU a model's forward pass uses."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    products = [lambda: torch.mm(a, b)]
    if torch.backends.mkldnn.is_available():
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], ""))
    best = float("inf")
    with torch.inference_mode():
        for product in products:
            product()
            for _ in range(repeats):
                start = time.perf_counter()
                product()
                best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def cpu_info() -> dict[str, object]:
    """The CPU: model name, architecture, the ISA level torch runs and (x86) whether it has VNNI."""
    return {"cpu": cpu_name(), "arch": platform.machine(), "isa": isa_level(), "vnni": has_vnni() if is_x86() else None}


def machine_info(peak_gflops: float | None = None) -> dict[str, object]:
    """The fields every speed figure carries; the fp32 matmul peak is measured unless given."""
    return {
        **cpu_info(),
        "threads": torch.get_num_threads(),
        "fp32_matmul_peak_gflops": round(peak_gflops if peak_gflops is not None else matmul_peak_gflops(), 1),
        "torch": torch.__version__,
    }


def describe_cpu(info: dict[str, object]) -> str:
    """``AMD EPYC (x86_64), AVX512 with VNNI``, from :func:`cpu_info` or :func:`machine_info`."""
    vnni = {True: " with VNNI", False: " without VNNI", None: ""}[info["vnni"]]
    return f"{info['cpu']} ({info['arch']}), {info['isa']}{vnni}"


def describe(info: dict[str, object]) -> str:
    """One line for a table's caption: the CPU, threads, fp32 matmul peak and torch version."""
    return (
        f"{describe_cpu(info)}, {info['threads']} threads, "
        f"fp32 matmul peak {info['fp32_matmul_peak_gflops']:.0f} GFLOP/s, torch {info['torch']}"
    )
