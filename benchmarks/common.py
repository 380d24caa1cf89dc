"""Shared pieces of the benchmark scripts: the machine they ran on, printing a table and writing JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_timing_args(parser: argparse.ArgumentParser) -> None:
    """The flags every latency benchmark shares: interleaved rounds, calls per round, threads, JSON."""
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--threads", type=int, help="default: torch's")
    parser.add_argument("--json", help="also write the results to this JSON file")


def parse_timing_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, then apply ``--threads`` to torch (ONNX Runtime sessions follow torch's count)."""
    import torch

    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def measured_on() -> dict[str, Any]:
    """The machine (CPU, ISA level, VNNI, threads, fp32 matmul peak), printed now and passed to
    ``write_json``: a speed figure means nothing without it."""
    from mobilevit.export.machine import describe, machine_info

    info = machine_info()
    print(f"measured on {describe(info)}", flush=True)
    return info


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A Markdown table, ready to paste into the README."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


def write_json(path: str | None, payload: Any, machine: dict[str, Any] | None = None) -> None:
    """``payload`` under ``results``, beside the ``machine`` it was measured on (when speed is in it)."""
    if path:
        document = {"machine": machine, "results": payload} if machine else payload
        Path(path).write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {path}")
