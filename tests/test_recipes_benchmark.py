"""benchmarks/recipes.py, the training recipes' results as data.

One real run of the default recipes (shapes segmentation, then detection from its model) cut down to one
epoch on 16 training images: every figure of its result file is checked against the run's own files
(config.yaml, summary.json, metrics.csv), and found on the rendered page as its unit writes it. The
checks that need no training (unknown recipes, a detection run without the segmentation run it starts
from, an output that already holds a run) call the script's ``plan`` directly.
"""

from __future__ import annotations

import csv
import importlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mobilevit.data.synthetic import SHAPES_SPLITS
from script_loader import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
ARGS = ["--epochs", "1", "--limit-train", "16", "--output-root", "runs-here"]
DEFAULT = ["shapes_segmentation", "shapes_detection"]
# The eval's figures of each task under the column the table gives them; the validation after each
# epoch (metrics.csv) scores the same ones but mAP@0.75.
COLUMNS = {
    "segmentation": {"mIoU": "miou", "pixel acc": "pixel_acc"},
    "detection": {"mAP": "map", "mAP@0.5": "map_50", "mAP@0.75": None},
}
# How the page writes the units of this table (written out here, not taken from render.py); the tiny
# runs take less than a minute.
SPEC = {
    "count": lambda v: f"{v:,}",
    "fraction": lambda v: f"{100 * v:.2f}%",
    "duration": lambda v: f"{v:.1f} s",
    "text": str,
}


render = load_script(BENCHMARKS / "render.py", "benchmarks_render")


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The default recipes, cut down, run from outside the repository, into runs-here/ there."""
    cwd = tmp_path_factory.mktemp("recipes")
    path = cwd / "results" / "recipes.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(BENCHMARKS / "recipes.py"), *ARGS, "--json", str(path)]
    process = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-4000:]
    doc = json.loads(path.read_text())
    (table,) = doc["tables"]
    return {"cwd": cwd, "results": path.parent, "doc": doc, "table": table, "rows": table["rows"]}


def _run_files(run: Path) -> tuple[dict, dict, list[dict]]:
    config = yaml.safe_load((run / "config.yaml").read_text())
    summary = json.loads((run / "summary.json").read_text())
    with open(run / "metrics.csv", newline="") as f:
        metrics = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
    return config, summary, metrics


def test_each_row_is_what_its_run_wrote(result):
    assert [row["recipe"] for row in result["rows"]] == DEFAULT
    assert result["table"]["columns"][6:11] == ["mIoU", "pixel acc", "mAP", "mAP@0.5", "mAP@0.75"]
    for row in result["rows"]:
        config, summary, metrics = _run_files(result["cwd"] / "runs-here" / row["recipe"])
        assert (row["model"], row["task"], row["img size"]) == (config["model"], config["task"], config["img_size"])
        assert row["epochs"] == config["epochs"] == len(metrics) == 1
        kept = summary["model"]["weights"]
        assert row["weights"] == {"ema": "EMA", "model": "trained"}[kept]
        assert row["step time"] == pytest.approx(sum(m["epoch_time"] for m in metrics))
        assert 0 < row["step time"] < row["wall time"]
        # No --limit-val: the last epoch validated model/'s weights on the whole split that eval scored.
        assert row["val images"] == SHAPES_SPLITS[1]
        prefix = "val_ema_" if kept == "ema" else "val_"
        for task, columns in COLUMNS.items():
            for column, metric in columns.items():
                if task != row["task"]:
                    assert row[column] is None
                elif metric is None:
                    assert 0 <= row[column] <= 1
                else:
                    assert row[column] == pytest.approx(metrics[-1][prefix + metric], abs=1e-4)
        headline = {"segmentation": "mIoU", "detection": "mAP@0.5"}[row["task"]]
        assert row[headline] == pytest.approx(summary["model"]["score"], abs=1e-4)


def test_detection_starts_from_the_segmentation_run_of_the_same_command(result):
    config = yaml.safe_load((result["cwd"] / "runs-here" / "shapes_detection" / "config.yaml").read_text())
    assert config["pretrained"] == "runs-here/shapes_segmentation/model/model.safetensors"
    assert result["table"]["notes"] == [
        "shapes_detection starts from the model of shapes_segmentation, trained before it in this run"
    ]


def test_result_file_says_how_it_was_run(result):
    doc = result["doc"]
    assert doc["script"] == "recipes" and doc["schema"] == render.SCHEMA
    json_path = str(result["results"] / "recipes.json")
    assert doc["command"] == "python " + shlex.join(["benchmarks/recipes.py", *ARGS, "--json", json_path])
    assert doc["environment"]["OMP_NUM_THREADS"] == "1" and doc["machine"]["threads"] == 1
    assert doc["wall_s"] >= sum(row["wall time"] for row in result["rows"])
    caption = result["table"]["caption"]
    assert "cut down (epochs 1, limit_train 16): not the recipes' figures" in caption


def test_page_shows_every_figure(result):
    page = render.render_page(result["results"])
    section = page.split("## Training recipes\n", 1)[1]
    assert render.SECTIONS["recipes"].intro in section
    table = result["table"]
    assert f"{table['caption']}:" in section and f"- {table['notes'][0]}" in section
    assert "| recipe | model | task | epochs | img size | val images | mIoU |" in section
    for row in table["rows"]:
        cells = [SPEC[table["units"].get(c, "text")](row[c]) if row[c] is not None else "-" for c in table["columns"]]
        assert "| " + " | ".join(cells) + " |" in section


@pytest.mark.parametrize(("seconds", "written"), [(8.44, "8.4 s"), (177.4, "2 min 57 s"), (5405, "90 min 5 s")])
def test_durations_are_written_in_minutes_and_seconds(seconds, written):
    assert render.format_value(seconds, "duration") == written


@pytest.fixture
def recipes(monkeypatch, tmp_path):
    """The script as a module, run from an empty folder (the recipes' outputs are relative to it)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.chdir(tmp_path)
    return importlib.import_module("recipes")


def test_the_recipes_are_planned_in_order_with_their_outputs(recipes, tmp_path):
    planned = recipes.plan(DEFAULT, tmp_path / "out", {"epochs": 2})
    assert [(r.name, r.config.output, r.config.epochs) for r in planned] == [
        (name, str(tmp_path / "out" / name), 2) for name in DEFAULT
    ]
    assert planned[1].config.pretrained == str(tmp_path / "out/shapes_segmentation/model/model.safetensors")
    # without --output-root, each recipe's own output: detection reads what segmentation writes
    own = recipes.plan(DEFAULT, None, {})
    assert [r.config.output for r in own] == ["runs/shapes_segmentation", "runs/shapes_detection"]
    assert own[1].config.pretrained == "runs/shapes_segmentation/model/model.safetensors"


def test_detection_alone_starts_from_an_earlier_segmentation_run(recipes, tmp_path):
    weights = tmp_path / "runs" / "shapes_segmentation" / "model" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.touch()
    (planned,) = recipes.plan(["shapes_detection"], tmp_path / "out", {})
    assert planned.config.pretrained == "runs/shapes_segmentation/model/model.safetensors"
    assert planned.after is None
    assert recipes.notes([planned]) == [
        "shapes_detection starts from runs/shapes_segmentation/model/model.safetensors, not trained in this run"
    ]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["shapes"], r"unknown recipe 'shapes': the recipes are the files of configs/ \(.*fashion_mnist, "),
        (["shapes_detection"], r"which recipe shapes_segmentation writes: train shapes_segmentation first"),
        (
            ["shapes_detection", "shapes_segmentation"],
            r"in the same command before shapes_detection "
            r"\(python benchmarks/recipes.py shapes_segmentation shapes_detection\)",
        ),
        (["fashion_mnist", "fashion_mnist"], "recipe fashion_mnist named twice"),
    ],
)
def test_a_plan_that_cannot_run_is_refused_before_training(recipes, names, message):
    with pytest.raises(ValueError, match=message):
        recipes.plan(names, None, {})


def test_a_run_is_never_written_over(recipes, tmp_path):
    (tmp_path / "out" / "shapes_segmentation" / "checkpoints").mkdir(parents=True)
    with pytest.raises(
        ValueError, match="out/shapes_segmentation, where shapes_segmentation would train, is not empty"
    ):
        recipes.plan(DEFAULT, tmp_path / "out", {})
    recipes.plan(DEFAULT, tmp_path / "elsewhere", {})  # what the message suggests


def test_cli_refuses_an_unknown_recipe_and_writes_nothing(tmp_path):
    path = tmp_path / "recipes.json"
    command = [sys.executable, str(BENCHMARKS / "recipes.py"), "fashion", "--json", str(path)]
    process = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert process.returncode == 1 and "error: unknown recipe 'fashion'" in process.stderr
    assert not path.exists() and not (tmp_path / "runs").exists()
