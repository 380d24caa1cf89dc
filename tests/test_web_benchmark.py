"""benchmarks/web.py: the web page's latency in headless Chromium beside ONNX Runtime in Python.

One tiny real run (mobilevit_xxs, 2 rounds of 2 runs, one thread, with the screenshots): each row says what
ran as the browser reports it (backend, threads, cross-origin isolation, Chromium's and onnxruntime-web's
versions), its ratio is its two latencies', the page shows it under its section, and the screenshots show the
result with no masked bar. Skipped, saying why, without Chromium or the runtime, as tests/export/test_web.py is.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mobilevit.export.web import ORT_WEB_VERSION, runtime_dir
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
CHROMIUM = shutil.which("chromium")
ARGS = ["--models", "mobilevit_xxs", "--rounds", "2", "--iters", "2", "--threads", "1"]
TASKS = ("classification", "segmentation", "detection")
MAGENTA = (255, 0, 255)  # what Playwright's mask paints

render = load_script(BENCHMARKS / "render.py", "benchmarks_render")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny run, from outside the repository: its result file, its screenshots and what it printed."""
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed: `apt-get install chromium` (scripts/env.sh test does)")
    try:
        runtime_dir(download=False)
    except FileNotFoundError as err:
        pytest.skip(f"the web page's runtime is missing (scripts/env.sh test downloads it): {err}")
    cwd = tmp_path_factory.mktemp("web")
    path, shots = cwd / "results" / "web.json", cwd / "shots"
    argv = [*ARGS, "--screenshots", str(shots), "--json", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / "web.py"), *argv]
    process = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-4000:]
    doc = json.loads(path.read_text())
    return {"doc": doc, "argv": argv, "results": path.parent, "shots": shots, "stdout": process.stdout}


@pytest.mark.slow
def test_rows_say_what_ran_and_compare_equal_thread_counts(result):
    (table,) = result["doc"]["tables"]
    first, *others = table["rows"]
    chromium = subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True).stdout
    assert (first["model"], first["task"], first["input"]) == ("mobilevit_xxs", "classification", "256x256")
    assert (first["threads"], first["threads from"]) == (1, "?threads=1")
    # the page's default row only where its thread count differs from --threads (half the cores)
    assert [(r["threads from"], r["threads"] != 1) for r in others] in ([], [("page default", True)])
    for row in table["rows"]:
        assert row["backend"] == "wasm" and row["crossOriginIsolated"] == "yes"
        assert row["Chromium"] in chromium and row["onnxruntime-web"] == ORT_WEB_VERSION
        assert row["browser ms"] > 0 and row["ORT ms"] > 0
        assert row["browser/ORT"] == pytest.approx(row["browser ms"] / row["ORT ms"], rel=1e-3)
    assert "`?runs=2`" in table["caption"] and "2 rounds" in table["caption"]


@pytest.mark.slow
def test_result_file_and_page(result):
    doc = result["doc"]
    assert doc["script"] == "web" and doc["schema"] == render.SCHEMA
    assert doc["command"] == "python " + shlex.join(["benchmarks/web.py", *result["argv"]])
    assert doc["environment"]["OMP_NUM_THREADS"] == "1" and doc["machine"]["threads"] == 1
    page = render.render_page(result["results"])
    section = page.split("## In the browser\n", 1)[1]
    assert render.SECTIONS["web"].intro in section
    (table,) = doc["tables"]
    for row in table["rows"]:
        cells = [render.format_value(row[c], table["units"].get(c, "text")) for c in table["columns"]]
        assert "| " + " | ".join(cells) + " |" in section


@pytest.mark.slow
def test_screenshots_show_each_task_page_unmasked(result):
    for task in TASKS:
        path = result["shots"] / f"web-{task}.png"
        assert f"wrote {path}: {{'run_ms'" in result["stdout"]
        pixels = np.asarray(Image.open(path).convert("RGB"))
        height, width, _ = pixels.shape
        assert height > 400 and 600 < width <= 1000  # the content, not the whole window
        assert not (pixels == MAGENTA).all(axis=-1).any()


def test_help_names_the_options():
    shown = subprocess.run([sys.executable, str(BENCHMARKS / "web.py"), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert all(option in shown.stdout for option in ("--models", "--rounds", "--iters", "--threads", "--screenshots"))
