"""ml-cvnets' checkpoint layouts (tests/fixtures/cvnets, written by scripts/cvnets_layouts.py from
ml-cvnets' sources) and random state dicts in them, for the conversion and download tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "cvnets"
LAYOUTS = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load_layout(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def random_state(layout: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the layout's keys and shapes, every tensor random (BN counters too)."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in layout["state_dict"]:
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10**6, (), generator=gen)
        elif key.endswith("running_var"):
            state[key] = 0.5 + torch.rand(shape, generator=gen)
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1
    return state
