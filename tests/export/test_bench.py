"""mobilevit bench: the rows it reports and its errors (timings themselves live in benchmarks/)."""

from __future__ import annotations

import json

import pytest
import torch

from mobilevit.cli import main
from mobilevit.export.bench import bench

KEYS = {"impl", "backend", "median_ms", "p90_ms", "img_per_s", "gflop_per_s", "peak_pct", "ours_over_this"}


def test_optimized_against_timm_and_hf_rows():
    rows = bench(
        "mobilevit_xxs", "optimized", batch_size=2, img_size=(64, 96), compare=("timm", "hf"), rounds=1, iters=2
    )
    # peers have no optimized path; our eager model runs beside it as the baseline it must beat
    assert [(r["impl"], r["backend"]) for r in rows] == [
        ("mobilevit", "optimized"),
        ("mobilevit", "eager"),
        ("timm", "eager"),
        ("hf", "eager"),
    ]
    for row in rows:
        assert row.keys() >= KEYS
        assert 0 < row["median_ms"] <= row["p90_ms"]
        # img/s is rounded to 0.1: on a slow CPU (a few img/s) that rounding is more than 1%
        assert row["img_per_s"] == pytest.approx(2 / row["median_ms"] * 1e3, rel=0.01, abs=0.05)
        assert row["gflop_per_s"] > 0 and row["peak_pct"] > 0
    assert rows[0]["ours_over_this"] == 1.0


def test_onnxruntime_backend_runs_for_us_and_timm():
    pytest.importorskip("onnxruntime")
    rows = bench("mobilevit_xxs", "onnxruntime", img_size=(64, 64), compare=("timm",), rounds=1, iters=1)
    assert [(r["impl"], r["backend"]) for r in rows] == [("mobilevit", "onnxruntime"), ("timm", "onnxruntime")]


def test_cli_json_and_errors(capsys):
    argv = ["bench", "--model", "mobilevit_xxs", "--img-size", "64", "64", "--rounds", "1", "--iters", "1", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    (row,) = printed["rows"]
    assert row["impl"] == "mobilevit" and row["backend"] == "eager"
    machine = printed["machine"]  # where it was measured: a latency means nothing without it
    assert machine["cpu"] and machine["isa"] == torch.backends.cpu.get_cpu_capability()
    assert machine["threads"] == torch.get_num_threads() and machine["fp32_matmul_peak_gflops"] > 0
    assert main(argv[:-1]) == 0
    caption = capsys.readouterr().out.splitlines()[1]
    assert caption.startswith(f"on {machine['cpu']}") and f"{machine['isa']}" in caption and "GFLOP/s" in caption
    assert main(["bench", "--model", "mobilevit_xxs", "--compare", "timm,nope"]) == 2
    assert "unknown peer(s) nope" in capsys.readouterr().err
    assert main(["bench", "--model", "resnet50"]) == 2
    assert "unknown model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--backend", "tensorrt"])
