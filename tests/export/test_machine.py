"""Where a speed figure was measured: every benchmark and `mobilevit bench` print and record it."""

from __future__ import annotations

import platform

import torch

from mobilevit.export import machine


def test_machine_info_names_the_cpu_its_isa_threads_and_peak():
    info = machine.machine_info(peak_gflops=123.24)
    assert info["cpu"] and info["cpu"] != "unknown"
    assert info["arch"] == platform.machine()
    assert info["isa"] == torch.backends.cpu.get_cpu_capability()
    assert info["threads"] == torch.get_num_threads()
    assert info["fp32_matmul_peak_gflops"] == 123.2
    line = machine.describe(info)
    assert info["cpu"] in line and info["isa"] in line
    assert f"{info['threads']} threads" in line and "123 GFLOP/s" in line


def test_vnni_is_read_from_the_cpu():
    caps = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else None
    if caps is not None:
        assert machine.has_vnni() == bool(caps.get("avx512_vnni") or caps.get("avx_vnni"))
    info = machine.machine_info(peak_gflops=1.0)
    assert info["vnni"] == (machine.has_vnni() if machine.is_x86() else None)
    assert (" with VNNI" in machine.describe(info)) == bool(info["vnni"])


def test_matmul_peak_is_measured():
    assert machine.matmul_peak_gflops(size=128, repeats=2) > 0.1
