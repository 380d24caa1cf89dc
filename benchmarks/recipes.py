"""What the training recipes in configs/ reach, trained here for real: the final model's score on the
validation split as ``mobilevit eval`` reports it, which weights it kept, and how long training took.

    python benchmarks/recipes.py [RECIPE ...] [--epochs N] [--limit-train N] [--limit-val N]
                                 [--output-root DIR] [--json benchmarks/results/recipes.json]

RECIPE names ``configs/RECIPE.yaml``; the default, ``shapes_segmentation shapes_detection``, in that
order because the detection recipe starts from the segmentation run's model. Each recipe is trained
by ``mobilevit.engine.train.train(load_config(recipe, **overrides))`` into its own ``output`` (as
``mobilevit train --config`` does) or ``DIR/RECIPE``; a recipe whose ``pretrained`` points into the
output of a recipe trained earlier in the same command starts from that run, wherever it was written.
Then ``mobilevit eval --checkpoint RUN/model --json`` scores the final model on the recipe's whole
validation split (``--limit-val`` shortens only the validation after each epoch).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import yaml

import common
from mobilevit import cli
from mobilevit.engine.config import TrainConfig, load_config
from mobilevit.engine.train import train

CONFIGS = common.ROOT / "configs"
DEFAULT_RECIPES = ("shapes_segmentation", "shapes_detection")
# The headline figures of each task, as ``mobilevit eval --json`` names them, and their columns.
METRICS = {
    "classification": {"top1": "top-1", "top5": "top-5"},
    "segmentation": {"miou": "mIoU", "pixel_acc": "pixel acc"},
    "detection": {"map": "mAP", "map_50": "mAP@0.5", "map_75": "mAP@0.75"},
}
WEIGHTS = {"ema": "EMA", "model": "trained"}  # summary.json's name for the weights model/ kept
UNITS = {
    "epochs": "count",
    "img size": "count",
    "val images": "count",
    **{column: "fraction" for columns in METRICS.values() for column in columns.values()},
    "step time": "duration",
    "wall time": "duration",
}
OVERRIDES = ("epochs", "limit_train", "limit_val")  # the flags that cut a recipe down, named in the caption


class Recipe(NamedTuple):
    """A recipe to train: its name, its config as this command runs it, and the recipe trained earlier
    in the same command whose model it starts from (None: its ``pretrained``, if any, as configured)."""

    name: str
    config: TrainConfig
    after: str | None


def recipe_path(name: str) -> Path:
    path = CONFIGS / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise ValueError(f"unknown recipe {name!r}: the recipes are the files of configs/ ({known})")
    return path


def configured_outputs() -> dict[str, Path]:
    """Each recipe's own ``output``, to find the recipe whose model another one starts from."""
    outputs = {}
    for path in sorted(CONFIGS.glob("*.yaml")):
        output = (yaml.safe_load(path.read_text()) or {}).get("output")
        if output:
            outputs[path.stem] = Path(output)
    return outputs


def plan(names: list[str], output_root: Path | None, overrides: dict[str, Any]) -> list[Recipe]:
    """The recipes' configs, checked before any of them trains (a mistake found after an hour of
    training costs the hour): known names, free outputs, and the runs their ``pretrained`` needs."""
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"recipe {', '.join(repeated)} named twice: each recipe trains once per command")
    outputs = configured_outputs()
    trained: dict[str, Path] = {}
    recipes = []
    for name in names:
        configured = load_config(recipe_path(name))
        output = output_root / name if output_root is not None else Path(configured.output)
        if output.exists() and any(output.iterdir()):
            raise ValueError(
                f"{output}, where {name} would train, is not empty: move it away, or train elsewhere with "
                "--output-root DIR"
            )
        pretrained, after = configured.pretrained, None
        source = Path(pretrained) if pretrained else None
        producer = next((r for r, out in outputs.items() if source and source.is_relative_to(out)), None)
        if producer in trained:
            after = producer
            pretrained = str(trained[producer] / source.relative_to(outputs[producer]))
        elif producer is not None and (producer in names or not source.exists()):
            order = [producer, *(n for n in names if n != producer)]
            raise ValueError(
                f"{name} starts from {pretrained}, which recipe {producer} writes: train {producer} first, "
                f"in the same command before {name} (python benchmarks/recipes.py {' '.join(order)})"
            )
        config = load_config(recipe_path(name), **overrides, output=str(output), pretrained=pretrained)
        trained[name] = output
        recipes.append(Recipe(name, config, after))
    return recipes


def evaluate(config: TrainConfig) -> dict[str, Any]:
    """``mobilevit eval --checkpoint RUN/model --json`` on the recipe's validation split, as a user runs it."""
    argv = ["eval", "--checkpoint", str(Path(config.output) / "model"), "--data", config.data]
    argv += ["--split", config.splits[1], "--workers", str(config.workers), "--json"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(argv)
    if status != 0:
        raise RuntimeError(f"`mobilevit {shlex.join(argv)}` failed with status {status} (its error is above)")
    return json.loads(printed.getvalue())


def step_seconds(run: Path) -> float:
    """The optimizer steps' time: each epoch's ``epoch_time`` in ``metrics.csv``, summed."""
    with open(run / "metrics.csv", newline="") as f:
        return sum(float(row["epoch_time"]) for row in csv.DictReader(f))


def run_recipe(recipe: Recipe, columns: list[str]) -> dict[str, Any]:
    """Train, evaluate, and the table's row: the run's facts, ``columns`` of the eval's figures
    (null where the recipe's task has no such figure), the kept weights and the times."""
    config = recipe.config
    print(f"\n{recipe.name}: training {config.model} into {config.output}", flush=True)
    start = time.perf_counter()
    train(config)
    wall = time.perf_counter() - start
    result = evaluate(config)
    figures = {column: result[key] for key, column in METRICS[config.task].items()}
    print(f"{recipe.name}: {figures} on {result['images']} validation images", flush=True)
    summary = json.loads((Path(config.output) / "summary.json").read_text())
    return {
        "recipe": recipe.name,
        "model": config.model,
        "task": config.task,
        "epochs": config.epochs,
        "img size": config.img_size,
        "val images": result["images"],
        **{column: figures.get(column) for column in columns},
        "weights": WEIGHTS[summary["model"]["weights"]],
        "step time": step_seconds(Path(config.output)),
        "wall time": wall,
    }


def caption(overrides: dict[str, Any]) -> str:
    changed = ", ".join(f"{key} {value}" for key, value in overrides.items())
    how = f"cut down ({changed}): not the recipes' figures" if changed else "as configured"
    return f"Each recipe of configs/ {how}; its final model/ scored by `mobilevit eval` on the whole validation split"


def notes(recipes: list[Recipe]) -> list[str]:
    """Where each fine-tuned recipe's weights came from."""
    found = []
    for recipe in recipes:
        if recipe.after is not None:
            found.append(f"{recipe.name} starts from the model of {recipe.after}, trained before it in this run")
        elif recipe.config.pretrained:
            found.append(f"{recipe.name} starts from {recipe.config.pretrained}, not trained in this run")
    return found


def main() -> None:
    run = common.start_run()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="*", default=list(DEFAULT_RECIPES), metavar="RECIPE")
    parser.add_argument("--epochs", type=int, help="default: the recipe's")
    parser.add_argument("--limit-train", type=int, help="train on the first N images only (quick runs)")
    parser.add_argument("--limit-val", type=int, help="validate each epoch on the first N images only")
    parser.add_argument("--output-root", type=Path, help="train RECIPE into DIR/RECIPE (default: its own output)")
    common.add_json_arg(parser)
    args = parser.parse_args()
    overrides = {key: getattr(args, key) for key in OVERRIDES if getattr(args, key) is not None}
    try:
        recipes = plan(args.recipes, args.output_root, overrides)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    machine = common.measured_on()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tasks = {recipe.config.task for recipe in recipes}
    columns = [column for task, names in METRICS.items() if task in tasks for column in names.values()]
    rows = [run_recipe(recipe, columns) for recipe in recipes]
    table = common.table("recipes", rows, UNITS, caption(overrides), notes(recipes))
    common.finish(run, args.json, [table], machine)


if __name__ == "__main__":
    main()
