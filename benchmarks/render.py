"""Render the benchmarks page from the result files the benchmark scripts write (benchmarks/results/*.json).

    python benchmarks/render.py [--results benchmarks/results] [-o docs/benchmarks.md]

Every figure on the page comes from a result file: each file is one run of one script, with its tables
and the envelope that says where and how they were measured (machine, package versions, date, command,
wall time; ``benchmarks/common.py`` writes it). The prose below is what each benchmark measures and how
to read it; no number is typed here. Imports the standard library only, so that the docs build can call
:func:`render_page` and :func:`headline_table` without torch.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

RESULTS = Path(__file__).resolve().parent / "results"
SCHEMA = 1
ENVELOPE = ("schema", "script", "command", "date", "wall_s", "environment", "machine", "versions", "commit", "tables")
MACHINE = ("cpu", "arch", "isa", "vnni", "threads", "fp32_matmul_peak_gflops")
TABLE = ("name", "caption", "columns", "units", "rows", "notes")

# How each kind of figure is written, by the unit a script gives its column (``common.table``).
FORMATS: dict[str, Callable[[Any], str]] = {
    "ms": lambda v: f"{v:.2f}",
    "ratio": lambda v: f"{v:.2f}x",
    "error": lambda v: f"{v:.1e}",
    "fraction": lambda v: f"{100 * v:.2f}%",
    "points": lambda v: f"{100 * v:.2f} points",
    "millions": lambda v: f"{v / 1e6:.2f}",
    "billions": lambda v: f"{v / 1e9:.2f}",
    "rate": lambda v: f"{v:.1f}",
    "duration": lambda v: wall_time(v),  # seconds, as `2 min 57 s` (`8.4 s` under a minute)
    "count": lambda v: f"{v:,}",
    "text": str,
}
MISSING = "-"  # a figure that was not measured (JSON null)
SCALES = {"millions": "M", "billions": "G"}  # named in the column's header


class ResultsError(ValueError):
    """A result file that cannot be rendered: the message names the file and how to regenerate it."""


class Section(NamedTuple):
    """A page section: its title and the prose that says what the benchmark measures and how to read it."""

    title: str
    intro: str


# In page order; a result file of another script gets a section titled by its name, with no prose.
SECTIONS = {
    "families": Section(
        "Choosing a model: v1, v2 and v3",
        "Every classifier with its parameters, multiply-accumulates (counted by `torch.utils.flop_counter`, "
        "which counts convolutions, linears and attention matmuls) and ImageNet-1k top-1 as published, beside "
        "its latency on each backend. Per backend all models are timed interleaved, round after round, so that "
        "the machine's drift touches every row alike; the figures are medians.",
    ),
    "backends": Section(
        "Inference latency on every backend",
        "Each (model, backend) pair is one `mobilevit bench` run: ours and the peers (timm, Hugging Face) in "
        "one process, interleaved, medians over rounds. Peers run on the same backend (timm exported or "
        "converted the same way), eagerly beside the `optimized` rows, which also time our own eager model. "
        "Ratios are our latency over theirs, measured in the same run: compare ratios within a row rather "
        "than milliseconds across runs. GFLOP/s counts the model's FLOPs; the peak is this machine's best "
        "fp32 matmul, measured in the same run. The int8 rows are compared with our fp32 row on the same "
        "runtime.",
    ),
    "phone": Section(
        "The phone path",
        "ExecuTorch and LiteRT, the runtimes phones run, on this CPU through XNNPACK, their CPU backend on "
        "ARM and x86 alike: ours against ONNX Runtime and against timm's model converted the same way "
        "(ExecuTorch's and LiteRT's standard recipes, every tensor of both models random), all files of "
        "a model and precision timed interleaved in one process. *partitions* and *outside* say where each "
        "file's ops run: one XNNPACK partition with nothing outside is the goal, as ops outside run on the "
        "runtime's slower kernels with a copy at each boundary. The second table puts fp16 files beside "
        "fp32 ones. These are proxies: [Timing on a real phone](phone.md) says how to measure on one.",
    ),
    "web": Section(
        "In the browser",
        "The page of `mobilevit export --format web` ([In the browser](web.md)) in Debian's Chromium, "
        "headless, on this machine: onnxruntime-web's WASM backend (SIMD, threaded), the page served as "
        "`mobilevit serve` serves it, so that it is cross-origin isolated and may run threads. Beside it, "
        "ONNX Runtime's CPU provider in Python runs the same ONNX file on the same input, interleaved with "
        "the page round after round (medians). Both time the model run alone (`session.run`, input tensor to "
        "output tensors), not the preprocessing, the post-processing or the drawing; the page's figure is "
        "its own median of `?runs=K`, read from its result JSON. Each row compares equal thread counts: "
        "*?threads=N* gives the page ONNX Runtime's threads, *page default* is what a visitor gets "
        "(onnxruntime-web's choice, half the cores) beside ONNX Runtime on as many. *browser/ORT* is the "
        "page's latency over ONNX Runtime's: what running in the browser costs on the same CPU. "
        "`--screenshots` writes the pictures of the web page's guide after the timed rounds.",
    ),
    "parity": Section(
        "Parity with timm and Hugging Face",
        "Maximum absolute difference of the logits of our v1 and v2 classifiers against timm's and Hugging "
        "Face's, with every parameter and BatchNorm statistic random, converted to ours, on batches of "
        "structured images. Hugging Face is fed the BGR flip of our RGB input, and its v2 rows use its "
        "zero-filled unfold (`create_model(name, unfold_remainder='zero')`). Against timm the difference is "
        "exactly zero where both run the same kernels in the same order.",
    ),
    "int8": Section(
        "int8 accuracy and speed",
        "The quickstart's Fashion-MNIST model exported in fp32 and int8 (static, calibrated on training "
        "images) and run by ONNX Runtime and LiteRT on the test images, on this CPU and, when QEMU is "
        "installed, on an emulated x86 CPU without VNNI. *Portable* int8 files have 7-bit weights, exact on "
        "every CPU; *full range* ones have 8-bit weights, exact only with VNNI or on ARM. The speed table "
        "times fp32 against int8 on the same runtime, interleaved in one process.",
    ),
    "ort_profile": Section(
        "Where ONNX Runtime spends its time",
        "Kernel milliseconds per run and op type, from ONNX Runtime's own profiler after its graph "
        "optimisations, for our export, timm's and our int8. The second table splits each graph into data "
        "movement (what a better export can remove) and arithmetic (what it cannot); our arithmetic over "
        "timm's total is the best ratio any export of the same network can reach on this runtime.",
    ),
    "train_throughput": Section(
        "Training speed",
        "Forward, backward and AdamW step of our models against timm's, interleaved in rounds in one process "
        "(medians); then one epoch over the same images with the paper's multi-scale variable-batch sampler "
        "against a fixed-size schedule.",
    ),
    "recipes": Section(
        "Training recipes",
        "What the recipes in `configs/` reach when trained here from their YAML, as a user runs them, and how "
        "long they take. Each final `model/` is scored by `mobilevit eval` on the recipe's whole validation "
        "split (Fashion-MNIST's is its test set). *weights* says which weights `model/` kept: the trained "
        "ones or their EMA, whichever scored better after the last epoch (`summary.json`). *step time* is "
        "the optimizer steps alone (`epoch_time` in `metrics.csv`, summed); *wall time* is the whole "
        "training, with each epoch's validation of both sets of weights and its checkpoint.",
    ),
    "small_data": Section(
        "Training defaults on a small dataset",
        "The common fine-tuning case, a few thousand images or fewer: `mobilevit train` with only `--data`, "
        "`--model`, `--img-size` and `--epochs` (*defaults*) against the same run with other settings, on a "
        "small ImageFolder written from Fashion-MNIST. *ImageNet's* is the batch of 128 and the multi-scale "
        "sampler that were the defaults before they followed the data. The rules the defaults follow are in "
        "[Training](training.md#defaults-that-scale-with-the-run).",
    ),
    "contention": Section(
        "Training on a busy machine",
        "A training alone, beside a second identical training, and beside a numpy matmul loop, each in its "
        "own process. *fixed threads* is torch's own choice, one compute thread per core whatever else runs; "
        "*governed* is the default, compute threads that follow the cores other processes leave free "
        "([Training](training.md#a-shared-cpu)). *vs alone* is the speed over the same setting alone; *vs "
        "before* is governed over fixed threads in the same scenario.",
    ),
    "gpu_check": Section(
        "GPU check",
        "Ours and timm's model trained the same way on one CUDA GPU, interleaved in rounds in one process "
        "(medians): one synthetic batch already on the GPU, channels_last, AdamW, in fp32, AMP bf16 and AMP "
        "fp16 (with a GradScaler), each also under `torch.compile`. *peak MiB* is the most GPU memory the "
        "model's training held: weights, optimizer state, batch and a step's activations and gradients. Then "
        "the training engine itself (`mobilevit train`: DataLoader, copies to the GPU, EMA, validation), alone "
        "and, on a machine with several GPUs, under `torchrun`.",
    ),
}
PAGE_INTRO = (
    "Every figure on this page is read from a result file in `benchmarks/results/`, written by the script "
    "named under each table, and rendered by `python benchmarks/render.py`. Each section names the machine "
    "(CPU, the ISA level torch's kernels run on, VNNI, threads, measured fp32 matmul peak), the date, the "
    "package versions and the exact command: rerun the command to reproduce or update it."
)
HEADLINE_BACKENDS = {"eager": "eager ms", "optimized": "optimized ms", "onnxruntime": "ONNX Runtime ms"}


def load_result(path: Path) -> dict[str, Any]:
    """One result file, checked for every field the page needs and for figures its units can write."""
    regenerate = f"regenerate it with `python benchmarks/{path.stem}.py` (or delete it)"
    try:
        text = path.read_text()
    except OSError as err:
        raise ResultsError(f"cannot read result file {path}: {err}") from err
    if not text.strip():
        raise ResultsError(f"result file {path} is empty; {regenerate}")
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise ResultsError(f"result file {path} is not valid JSON ({err}); {regenerate}") from err
    _require(doc, ENVELOPE, f"result file {path}", regenerate)
    if doc["schema"] != SCHEMA:
        raise ResultsError(f"result file {path} has schema {doc['schema']}, this renderer reads {SCHEMA}; {regenerate}")
    _require(doc["machine"], MACHINE, f"the machine of {path}", regenerate)
    if not doc["tables"]:
        raise ResultsError(f"result file {path} has no tables; {regenerate}")
    for table in doc["tables"]:
        _require(table, TABLE, f"a table of {path}", regenerate)
        for row in table["rows"]:
            _require(row, table["columns"], f"a row of table {table['name']!r} in {path}", regenerate)
        try:
            markdown_table(table)
        except ValueError as err:
            raise ResultsError(f"table {table['name']!r} in {path}: {err}; {regenerate}") from err
    return doc


def _require(mapping: object, keys: tuple[str, ...] | list[str], what: str, regenerate: str) -> None:
    if not isinstance(mapping, dict):
        raise ResultsError(f"{what} is a JSON {type(mapping).__name__}, not an object; {regenerate}")
    missing = [key for key in keys if key not in mapping]
    if missing:
        raise ResultsError(f"{what} lacks {', '.join(map(repr, missing))}; {regenerate}")


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every result file in ``results_dir``, in page order (the known sections first, then by name)."""
    order = list(SECTIONS)
    paths = sorted(
        Path(results_dir).glob("*.json"), key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.stem)
    )
    return [load_result(path) for path in paths]


def format_value(value: Any, unit: str) -> str:
    """One figure as its unit writes it (``None``, not measured, as a dash)."""
    if unit not in FORMATS:
        raise ValueError(f"unknown unit {unit!r}; the units are {', '.join(FORMATS)}")
    if value is None:
        return MISSING
    if unit != "text" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise ValueError(f"{value!r} is not a number, as unit {unit!r} needs")
    return FORMATS[unit](value)


def markdown_table(table: dict[str, Any]) -> str:
    """The table's rows as Markdown, each figure formatted by its column's unit (``text`` when it has none)."""
    columns, units = table["columns"], table["units"]
    lines = header([heading(column, units.get(column, "text")) for column in columns])
    for row in table["rows"]:
        cells = []
        for column in columns:
            try:
                cells.append(format_value(row[column], units.get(column, "text")))
            except ValueError as err:
                raise ValueError(f"column {column!r}: {err}") from err
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def heading(column: str, unit: str) -> str:
    """A column's header, with the scale its figures are written in: ``params (M)``."""
    return f"{column} ({SCALES[unit]})" if unit in SCALES else column


def header(headings: list[str]) -> list[str]:
    return ["| " + " | ".join(headings) + " |", "|" + "|".join("---" for _ in headings) + "|"]


def machine_line(machine: dict[str, Any]) -> str:
    """``AMD EPYC 7B13 (x86_64), AVX512 with VNNI, 2 threads, fp32 matmul peak 207 GFLOP/s``, then
    ``; GPU NVIDIA H100 80GB HBM3`` when the run recorded one (``gpu``, and ``gpus`` when several)."""
    vnni = {True: " with VNNI", False: " without VNNI", None: ""}[machine["vnni"]]
    gpu = f"; GPU {machine['gpu']}" if machine.get("gpu") else ""
    if gpu and machine.get("gpus", 1) > 1:
        gpu += f" ({machine['gpus']} visible)"
    return (
        f"{machine['cpu']} ({machine['arch']}), {machine['isa']}{vnni}, "
        f"{machine['threads']} thread{'s' if machine['threads'] != 1 else ''}, "
        f"fp32 matmul peak {machine['fp32_matmul_peak_gflops']:.0f} GFLOP/s{gpu}"
    )


def wall_time(seconds: float) -> str:
    """``2 min 57 s``, or ``8.4 s`` under a minute."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{seconds:.1f} s"


def command_line(doc: dict[str, Any]) -> str:
    """The command as it was run, after the environment variables that steered its kernels and threads."""
    return " ".join([*(f"{key}={value}" for key, value in doc["environment"].items()), doc["command"]])


def caption(doc: dict[str, Any]) -> str:
    """Where, when, with what and how a result file's figures were measured."""
    versions = ", ".join(f"{name} {version}" for name, version in doc["versions"].items())
    commit = f", commit {doc['commit']}" if doc["commit"] else ""
    return "\n".join(
        [
            f"- Machine: {machine_line(doc['machine'])}",
            f"- Run: {doc['date']}, {wall_time(doc['wall_s'])}{commit}",
            f"- Versions: {versions}",
            f"- Command: `{command_line(doc)}`",
        ]
    )


def render_section(doc: dict[str, Any]) -> str:
    """One result file: title, what it measures, where it was measured, then each table under its caption."""
    section = SECTIONS.get(doc["script"], Section(doc["script"], ""))
    parts = [f"## {section.title}", *([section.intro] if section.intro else []), caption(doc)]
    for table in doc["tables"]:
        if table["caption"]:
            parts.append(f"{table['caption']}:")
        parts.append(markdown_table(table))
        if table["notes"]:
            parts.append("\n".join(f"- {note}" for note in table["notes"]))
    return "\n\n".join(parts)


def render_page(results_dir: Path = RESULTS) -> str:
    """The benchmarks page (Markdown): one section per result file in ``results_dir``."""
    body = [render_section(doc) for doc in load_results(results_dir)] or [
        f"No results yet: `{results_dir}` holds no result file. Run the scripts in `benchmarks/` to write them."
    ]
    return "\n\n".join(["# Benchmarks", PAGE_INTRO, *body]) + "\n"


def headline_table(results_dir: Path = RESULTS) -> str:
    """The README's one table, from ``backends.json``: each model's size, cost and published top-1 beside
    our latency on the eager, optimized and ONNX Runtime backends (those that were run), each with its
    ratio to timm's in the same run, under one caption line that names the machine and the command."""
    path = Path(results_dir) / "backends.json"
    rerun = "rerun `python benchmarks/backends.py`"
    if not path.exists():
        raise ResultsError(f"{path} does not exist; write it with `python benchmarks/backends.py`")
    doc = load_result(path)
    tables = {table["name"]: table for table in doc["tables"]}
    if not {"models", "latency"} <= tables.keys():
        raise ResultsError(f"{path} lacks the 'models' or the 'latency' table; {rerun}")
    models, latency = tables["models"], tables["latency"]
    by_key = {(row["model"], row["backend"]): row for row in latency["rows"]}
    backends = [b for b in HEADLINE_BACKENDS if any(backend == b for _, backend in by_key)]
    if not backends:
        raise ResultsError(f"{path} has no {', '.join(HEADLINE_BACKENDS)} rows; {rerun} with them")
    headings = [heading(column, models["units"].get(column, "text")) for column in models["columns"]]
    lines = [
        f"{latency['caption']}; in parentheses, against timm in the same run (timm eager beside optimized). "
        f"Measured on {machine_line(doc['machine'])}, on {doc['date']}: `{command_line(doc)}`.",
        "",
        *header([*headings, *(HEADLINE_BACKENDS[b] for b in backends)]),
    ]
    for facts in models["rows"]:
        cells = [format_value(facts[c], models["units"].get(c, "text")) for c in models["columns"]]
        cells += [_with_ratio(by_key.get((facts["model"], b)), latency["units"]) for b in backends]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _with_ratio(row: dict[str, Any] | None, units: dict[str, str]) -> str:
    """``13.33 (0.88x)``: our median latency and its ratio to timm's (the latency alone without timm)."""
    if row is None:
        return MISSING
    ms = format_value(row["median ms"], units["median ms"])
    return ms if row["vs timm"] is None else f"{ms} ({format_value(row['vs timm'], units['vs timm'])})"


README = Path(__file__).resolve().parents[1] / "README.md"
HEADLINE_START, HEADLINE_END = "<!-- headline:start -->", "<!-- headline:end -->"


def with_headline(readme: str, table: str) -> str:
    """``readme`` with ``table`` between its headline markers (what was there before is replaced)."""
    start, end = readme.find(HEADLINE_START), readme.find(HEADLINE_END)
    if start < 0 or end < start:
        raise ResultsError(f"the README has no {HEADLINE_START} ... {HEADLINE_END} block to hold the headline table")
    return readme[: start + len(HEADLINE_START)] + "\n" + table + readme[end:]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of result files")
    parser.add_argument("-o", "--output", type=Path, help="write the page here (default: print it)")
    parser.add_argument("--readme", action="store_true", help="also put the headline table into README.md")
    args = parser.parse_args(argv)
    try:
        page = render_page(args.results)
        if args.readme:
            README.write_text(with_headline(README.read_text(), headline_table(args.results)))
            print(f"wrote the headline table into {README}")
    except ResultsError as err:
        sys.exit(f"error: {err}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(page)
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(page)


if __name__ == "__main__":
    main()
