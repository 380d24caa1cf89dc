"""Loading a state dict into a built model with one error that lists every problem: what the factory
loads checkpoints with, and what a training run resumes with."""

from __future__ import annotations

import torch
from torch import nn

from mobilevit.errors import CheckpointMismatchError
from mobilevit.models.backbones import BACKBONE_FAMILIES


def _family_of(model: nn.Module) -> tuple[str, tuple[str, ...]]:
    """The family label and registered sizes of ``model`` (task models with their prefix, e.g.
    ``deeplabv3_``), for error messages."""
    name = getattr(model, "model_name", None) or ""
    for size, family in BACKBONE_FAMILIES.items():
        if name == size or name.endswith(f"_{size}"):
            prefix = name.removesuffix(size)
            return family.label, tuple(prefix + s for s in family.configs)
    return "MobileViT", ()


def load_state_dict_checked(
    model: nn.Module, state: dict[str, torch.Tensor], keep_own: tuple[str, ...] = (), context: str = ""
) -> None:
    """``load_state_dict`` that reports missing keys, unexpected keys and shape mismatches together.
    Keys under a ``keep_own`` prefix keep the model's own tensors."""
    target = model.state_dict()
    missing = [k for k in target if k not in state and not k.startswith(keep_own)]
    unexpected = [k for k in state if k not in target]
    mismatched = [
        (k, tuple(v.shape), tuple(target[k].shape))
        for k, v in state.items()
        if k in target and v.shape != target[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointMismatchError(missing, unexpected, mismatched, context, *_family_of(model))
    model.load_state_dict({**target, **state})
