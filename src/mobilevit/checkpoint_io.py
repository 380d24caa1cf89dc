"""Checkpoint file I/O, below every other module: reading weights from any supported file layout
and writing files atomically.

Loading never executes code from a file: ``.pt``/``.pth``/``.bin`` files are read with
``torch.load(weights_only=True)`` and safetensors is the default format for writing.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mobilevit.errors import CheckpointError

PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "model_state")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CONFIG_FILE = "config.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A crash or a full disk during ``write`` leaves any previous ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_safetensors(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))


def save_json(data: Any, path: str | os.PathLike) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")

    atomic_write(path, write)


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"cannot read {path}: {err}. The file is missing or not valid JSON.") from err


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError) as err:
        raise CheckpointError(
            f"cannot read {path} as safetensors ({err}); the file is truncated or corrupt: download or save it again."
        ) from err


def load_pickle(path: str | os.PathLike) -> Any:
    """``torch.load(weights_only=True)`` with errors that say what is wrong: a missing file, a
    truncated or corrupt one, or one holding code (refused, never run)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}. Check the path, or download the weights first.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "global" not in str(err):  # weights_only names the disallowed global
            raise CheckpointError(
                f"cannot read {path} as a PyTorch checkpoint ({err}); the file is truncated or corrupt: "
                "download or save it again."
            ) from err
        raise CheckpointError(
            f"refusing to load {path}: it holds Python objects besides tensors, and unpickling them could run "
            "code from the file (we load with weights_only=True). Re-save it as a plain state dict "
            "(torch.save(model.state_dict(), ...)) or as safetensors."
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot read {path} as a PyTorch checkpoint ({err}); the file is truncated or corrupt: "
            "download or save it again."
        ) from err


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: the object itself, or its 'state_dict'/'model'/'model_state'."""
    if isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path} holds no state dict (found {type(obj).__name__}).")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(
            f"{path} holds no tensors at the top level nor under {', '.join(WRAPPER_KEYS)}; "
            f"its keys are: {', '.join(map(str, list(obj)[:10]))}."
        )
    return tensors


def _read_directory(path: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return read_state_dict(path / name)
    raise CheckpointError(
        f"{path} is a directory without {' or '.join(WEIGHT_FILES)}: expected a Hugging Face model "
        "directory or one written by save_pretrained()."
    )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors from a ``.safetensors`` file, a ``.pt``/``.pth``/``.bin`` file (bare or wrapped state
    dict), or a model directory (``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}. Check the path, or download the weights first.")
    if path.is_dir():
        return _read_directory(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _unwrap(load_pickle(path), path)
    raise CheckpointError(
        f"unsupported checkpoint file {path}: expected .safetensors, {', '.join(PICKLE_SUFFIXES)} or a model directory."
    )
