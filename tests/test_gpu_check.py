"""benchmarks/gpu_check.py on CPU (``--device cpu``): one tiny real run of every part the GPU run has (the
modes, ours against timm's interleaved, the engine alone and under torchrun with gloo), its result file
checked against what the script promises, and the benchmarks page rendered from it. What needs no
training (argument errors, where results go) is checked on the script loaded as a module.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
TINY = [
    "--device", "cpu", "--model", "mobilevit_xxs", "--img-size", "64", "--batch-size", "2", "--steps", "2",
    "--warmup", "1", "--rounds", "1", "--engine-steps", "2", "--engine-epochs", "1", "--workers", "1",
]  # fmt: skip
MODES = ["fp32", "bf16", "fp16"]

render = load_script(BENCHMARKS / "render.py", "benchmarks_render")


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module: benchmarks/ on the path for its ``import common``, as when it runs."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        yield load_script(BENCHMARKS / "gpu_check.py", "benchmarks_gpu_check")
    finally:
        sys.path.remove(str(BENCHMARKS))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """fp32, bf16 and fp16 asked for on CPU, the engine alone and under 2 gloo processes, into a temp folder."""
    results = tmp_path_factory.mktemp("results")
    argv = [*TINY, "--modes", *MODES, "--ddp-processes", "2", "--json", str(results / "gpu_check.json")]
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=results, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = json.loads((results / "gpu_check.json").read_text())
    return {"results": results, "argv": argv, "doc": doc, "tables": {t["name"]: t for t in doc["tables"]}}


def test_each_mode_has_ours_and_timms_row_and_their_ratio(run):
    modes = run["tables"]["modes"]
    rows = {(row["mode"], row["implementation"]): row for row in modes["rows"]}
    assert list(rows) == [("fp32", "mobilevit"), ("fp32", "timm"), ("bf16", "mobilevit"), ("bf16", "timm")]
    for mode in ("fp32", "bf16"):
        ours, timm = rows[mode, "mobilevit"], rows[mode, "timm"]
        assert ours["img/s"] > 0 and timm["img/s"] > 0
        assert ours["speed vs timm"] == pytest.approx(ours["img/s"] / timm["img/s"])
        assert timm["speed vs timm"] is None and timm["memory vs timm"] is None  # the ratios are ours over timm's
        # CPU: no peak memory, so no memory ratio; the loss of real training steps
        assert ours["peak MiB"] is None is ours["memory vs timm"] is timm["peak MiB"]
        assert all(math.isfinite(row["last loss"]) and row["last loss"] > 0 for row in (ours, timm))
    assert modes["units"] == {
        "img/s": "rate",
        "speed vs timm": "ratio",
        "peak MiB": "rate",
        "memory vs timm": "ratio",
        "last loss": "rate",
    }
    skipped = [note for note in modes["notes"] if note.startswith("fp16:")]
    assert skipped == ["fp16: skipped on cpu: fp16 autocast with a GradScaler needs a CUDA GPU"]
    assert "mobilevit_xxs at 64x64, batch 2" in modes["caption"] and "1 x 2 timed steps" in modes["caption"]


def test_engine_alone_and_under_torchrun(run):
    alone, ddp = run["tables"]["engine"]["rows"]
    assert (alone["run"], alone["processes"]) == ("mobilevit train", 1)
    assert (ddp["run"], ddp["processes"]) == ("torchrun --nproc_per_node 2 -m mobilevit train", 2)
    for row in (alone, ddp):
        assert row["workers per process"] == 1 and row["img/s"] > 0
        assert row["img/s per process"] == pytest.approx(row["img/s"] / row["processes"])


def test_result_file_envelope_names_the_run(run):
    doc = run["doc"]
    assert doc["schema"] == render.SCHEMA and doc["script"] == "gpu_check"
    assert doc["command"] == "python " + shlex.join(["benchmarks/gpu_check.py", *run["argv"]])
    assert doc["environment"]["OMP_NUM_THREADS"] == "1"
    assert "gpu" not in doc["machine"]  # a CPU run names no GPU
    assert {"mobilevit", "torch", "timm"} <= doc["versions"].keys()


def test_page_shows_the_gpu_check_section(run):
    page = render.render_page(run["results"])
    section = page.split("## GPU check\n", 1)[1]
    for table in run["doc"]["tables"]:
        assert f"{table['caption']}:" in section
        for row in table["rows"]:
            assert render.markdown_table({**table, "rows": [row]}).splitlines()[-1] in section
    assert "| bf16 | mobilevit |" in section and "| fp32 | timm |" in section


@pytest.mark.parametrize(
    ("gpus", "named"), [(1, "; GPU NVIDIA H100 80GB HBM3"), (8, "; GPU NVIDIA H100 80GB HBM3 (8 visible)")]
)
def test_the_machine_line_names_a_recorded_gpu(run, tmp_path, gpus, named):
    doc = json.loads(json.dumps(run["doc"]))
    doc["machine"].update(gpu="NVIDIA H100 80GB HBM3", gpus=gpus)
    (tmp_path / "gpu_check.json").write_text(json.dumps(doc))
    machine = next(text for text in render.render_page(tmp_path).splitlines() if text.startswith("- Machine:"))
    assert machine == f"- Machine: {render.machine_line(run['doc']['machine'])}{named}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_cuda_without_a_gpu_is_a_clear_error():
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--model", "mobilevit_xxs"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "error: no CUDA GPU: run with --device cpu for a smoke run"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "2", "--rounds", "3"], "--steps 2 is fewer than --rounds 3"),
        (["--model", "mobilevitv3_xxs"], "timm has no mobilevitv3_xxs"),
        (["--ddp-processes", "1"], "--ddp-processes is 0 (no DDP run) or at least 2, got 1"),
        (["--device", "mps"], "--device is cuda or cpu, got 'mps'"),
        (["--modes", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_bad_arguments_say_what_to_do(gpu_check, monkeypatch, capsys, args, message):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", *args])
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_cpu_smoke_run_never_writes_into_the_results(gpu_check, tmp_path):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert gpu_check.output_path(None, cuda) == BENCHMARKS / "results" / "gpu_check.json"
    assert BENCHMARKS not in gpu_check.output_path(None, cpu).parents
    assert gpu_check.output_path(tmp_path / "x.json", cpu) == tmp_path / "x.json"


def test_fp16_for_the_engine_on_cpu_is_refused_before_any_work(gpu_check, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--device", "cpu", "--engine-amp", "fp16"])
    with pytest.raises(SystemExit, match="--engine-amp fp16 needs a CUDA GPU; on cpu use --engine-amp bf16 or none"):
        gpu_check.main()
