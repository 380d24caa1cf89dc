"""Shared pieces of the benchmark scripts: their flags, their tables and the one envelope every result
file has (machine, package versions, date, command, wall time), written as JSON to
``benchmarks/results/<script>.json``, which ``benchmarks/render.py`` turns into the benchmarks page."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import mobilevit
from mobilevit.export.machine import describe, machine_info
from mobilevit.models.summary import count_macs, count_params
from render import FORMATS, SCHEMA, markdown_table

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
RESULTS = BENCHMARKS / "results"
# Distributions whose version can move a figure; those not installed are left out of the envelope.
PACKAGES = (
    "mobilevit", "torch", "torchvision", "numpy", "timm", "transformers", "onnx", "onnxscript", "onnxruntime",
    "executorch", "coremltools", "litert-torch", "ai-edge-litert",
)  # fmt: skip
# Environment variables that change which kernels run, or on how many threads.
ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "MKL_NUM_THREADS",
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
)
# ImageNet-1k top-1 (%) at 256x256 as published, from ../shared/reference/mobilevit.md.
PUBLISHED_TOP1 = {
    "mobilevit_xxs": 69.0,
    "mobilevit_xs": 74.8,
    "mobilevit_s": 78.4,
    "mobilevitv2_050": 70.18,
    "mobilevitv2_075": 75.56,
    "mobilevitv2_100": 78.09,
    "mobilevitv2_125": 79.65,
    "mobilevitv2_150": 80.38,
    "mobilevitv2_175": 80.84,
    "mobilevitv2_200": 81.17,
    "mobilevitv3_xxs": 70.98,
    "mobilevitv3_xs": 76.7,
    "mobilevitv3_s": 79.3,
}
FACT_UNITS = {"params": "millions", "MACs": "billions", "top-1 (published)": "text"}


@dataclass(frozen=True)
class Run:
    """How and when a benchmark started: what its envelope records beside the figures."""

    argv: tuple[str, ...]
    date: str  # UTC, ISO 8601
    started: float  # time.perf_counter()


def start_run() -> Run:
    """Call first in ``main``: the wall time in the envelope counts from here (the imports before it,
    a few seconds, are left out)."""
    date = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return Run(tuple(sys.argv), date, time.perf_counter())


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", type=Path, help="write the results here (default: benchmarks/results/SCRIPT.json)")


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """The flags every latency benchmark shares: interleaved rounds, calls per round, threads, JSON."""
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, help="default: torch's")
    add_json_arg(parser)


def parse_timing_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, then apply ``--threads`` to torch (ONNX Runtime sessions follow torch's count)."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def measured_on() -> dict[str, Any]:
    """The machine (CPU, ISA level, VNNI, threads, fp32 matmul peak), printed now and recorded in the
    envelope: a speed figure means nothing without it."""
    info = machine_info()
    print(f"measured on {describe(info)}", flush=True)
    return info


def model_facts(name: str, size: tuple[int, int]) -> dict[str, Any]:
    """A classifier's parameters, multiply-accumulates at ``size`` and published top-1 (``FACT_UNITS``)."""
    model = mobilevit.create_model(name).eval()
    return {
        "model": name,
        "params": count_params(model),
        "MACs": count_macs(model, torch.zeros(1, 3, *size)),
        "top-1 (published)": PUBLISHED_TOP1.get(name),
    }


def table(
    name: str,
    rows: list[dict[str, Any]],
    units: dict[str, str],
    caption: str = "",
    notes: Iterable[str] = (),
) -> dict[str, Any]:
    """One table of a result file. ``units`` says how the renderer writes each numeric column
    (``render.FORMATS``: ms, ratio, error...); a column a row lacks is null there (not measured)."""
    unknown = set(units.values()) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown units {sorted(unknown)}; choose from {', '.join(FORMATS)}")
    columns = list(dict.fromkeys(column for row in rows for column in row))
    return {
        "name": name,
        "caption": caption,
        "columns": columns,
        "units": {column: units[column] for column in columns if column in units},
        "rows": [{column: row.get(column) for column in columns} for row in rows],
        "notes": list(notes),
    }


def command(argv: Iterable[str]) -> str:
    """The command line as run from the repository root: ``python benchmarks/NAME.py ARGS``."""
    script, *args = argv
    path = Path(script).resolve()
    if path.is_relative_to(ROOT):
        script = path.relative_to(ROOT).as_posix()
    return "python " + shlex.join([script, *args])


def versions() -> dict[str, str]:
    """Python's version and each installed distribution of ``PACKAGES``."""
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str | None:
    """The checkout's commit, ``+dirty`` with uncommitted changes to tracked files; None outside git."""

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout

    try:
        commit, changes = git("rev-parse", "--short", "HEAD").strip(), git("status", "--porcelain", "-uno").strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+dirty" if changes else "")


def envelope(run: Run, tables: list[dict[str, Any]], machine: dict[str, Any]) -> dict[str, Any]:
    """A result file: the tables, and the machine, versions, commit, date, command and wall time of the run."""
    return {
        "schema": SCHEMA,
        "script": Path(run.argv[0]).stem,
        "command": command(run.argv),
        "date": run.date,
        "wall_s": round(time.perf_counter() - run.started, 1),
        "environment": {key: os.environ[key] for key in ENVIRONMENT if key in os.environ},
        "machine": machine,
        "versions": versions(),
        "commit": git_commit(),
        "tables": tables,
    }


def finish(run: Run, json_path: Path | None, tables: list[dict[str, Any]], machine: dict[str, Any]) -> Path:
    """Print the tables and write the result file (``json_path``, by default benchmarks/results/SCRIPT.json)."""
    document = envelope(run, tables, machine)
    for item in tables:
        print(f"\n{item['caption']}:\n" if item["caption"] else "")
        print(markdown_table(item))
        if item["notes"]:
            print("\n" + "\n".join(f"- {note}" for note in item["notes"]))
    path = json_path or RESULTS / f"{document['script']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path
