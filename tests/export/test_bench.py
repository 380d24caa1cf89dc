"""mobilevit bench (mobilevit.export.bench): the rows it reports for every family, backend and peer, and
its errors (timings themselves live in benchmarks/)."""

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
        # our time over this row's: the medians' ratio, within the rounding of both to 0.01 ms and of it to 0.01
        ours, this = rows[0]["median_ms"], row["median_ms"]
        slack = 0.005 * (1 / ours + 1 / this) * ours / this + 0.005
        assert row["ours_over_this"] == pytest.approx(ours / this, abs=slack)


@pytest.mark.parametrize(
    ("name", "backend", "compare"),
    [
        ("mobilevit_xxs", "onnxruntime", ("timm",)),
        ("mobilevitv2_050", "eager", ("timm", "hf")),
        ("mobilevitv2_050", "optimized", ("timm", "hf")),
        ("mobilevitv3_xxs", "eager", ()),  # timm and Hugging Face have no v3
        ("mobilevitv3_xxs", "optimized", ()),
        # slow: two exports each; the v1 case runs the same backend
        pytest.param("mobilevitv2_050", "onnxruntime", ("timm",), marks=pytest.mark.slow),
        pytest.param("mobilevitv3_xxs", "onnxruntime", (), marks=pytest.mark.slow),
        pytest.param("mobilevit_xxs", "litert", ("timm",), marks=pytest.mark.slow),
        pytest.param("mobilevit_xxs", "litert-int8", ("timm",), marks=pytest.mark.slow),
    ],
    ids=lambda v: ("vs-" + "-".join(v) if v else "alone") if isinstance(v, tuple) else None,
)
def test_rows_of_every_family_backend_and_peer(name, backend, compare):
    if backend in ("onnxruntime", "litert", "litert-int8"):
        pytest.importorskip("onnxruntime" if backend == "onnxruntime" else "litert_torch")
    rows = bench(name, backend, img_size=(64, 64), compare=compare, rounds=1, iters=1)
    # peers have no optimized path: they run eagerly beside it, and so does our eager model, as its baseline
    ours = [("mobilevit", backend), *([("mobilevit", "eager")] if backend == "optimized" else [])]
    peers = [(peer, "eager" if backend == "optimized" else backend) for peer in compare]
    assert [(r["impl"], r["backend"]) for r in rows] == ours + peers
    assert all(r["model"] == name and r["median_ms"] > 0 for r in rows)
    assert rows[0]["gflop_per_s"] > 0


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


def test_cli_compares_v2_with_hf(capsys):
    argv = ["bench", "--model", "mobilevitv2_050", "--compare", "timm,hf", "--img-size", "64", "64"]
    assert main([*argv, "--rounds", "1", "--iters", "1", "--json"]) == 0
    assert [row["impl"] for row in json.loads(capsys.readouterr().out)["rows"]] == ["mobilevit", "timm", "hf"]


def test_cli_says_peers_have_no_v3(capsys):
    argv = ["bench", "--model", "mobilevitv3_050", "--compare", "timm,hf", "--img-size", "64", "64"]
    assert main([*argv, "--rounds", "1", "--iters", "1"]) == 2
    err = capsys.readouterr().err
    assert "cannot compare mobilevitv3_050 with timm, hf" in err and "without --compare" in err
