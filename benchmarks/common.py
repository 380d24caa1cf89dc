"""Shared pieces of the benchmark scripts: printing a table and writing JSON."""

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


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    """A Markdown table, ready to paste into the README."""
    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")


def write_json(path: str | None, payload: Any) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"wrote {path}")
