"""TorchScript export: a frozen trace, loadable with ``torch.jit.load`` from C++ (LibTorch) or Python.

The trace records the tensor sizes it computes with, and MobileViT blocks keep their resize while
tracing, so the saved module runs at any batch size and input size, not only the traced one.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch
from torch import nn


def export_torchscript(model: nn.Module, path: str | os.PathLike, example: torch.Tensor) -> Path:
    """Trace ``model`` in eval mode on ``example``, freeze it (weights folded in as constants) and save it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        # PyTorch deprecates TorchScript, and the input checks warn that the trace treats them as constants.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), example, check_trace=False)
        torch.jit.save(torch.jit.freeze(traced), str(path))
    return path


class TorchScriptRunner:
    """A loaded TorchScript module that returns logits for a batch."""

    def __init__(self, path: str | os.PathLike) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(path), map_location="cpu")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.module(x)
