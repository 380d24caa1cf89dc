"""Exceptions that tell the user what is wrong (a checkpoint, a run, a missing extra) and what to do about it."""

from __future__ import annotations

import importlib


class CheckpointError(ValueError):
    """A checkpoint file or directory cannot be read or does not fit the model."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes differ from the model's; every difference is listed."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        context: str = "",
        family: str = "MobileViT",
        sizes: tuple[str, ...] = (),
    ) -> None:
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched
        lines = [f"checkpoint does not match the model{context}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_preview(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_preview(unexpected)}")
        if mismatched:
            shapes = [f"{k} checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched]
            lines.append(f"  shape mismatches ({len(mismatched)}): {_preview(shapes)}")
        size_hint = f" (one of {', '.join(sizes)})" if sizes else ""
        lines.append(
            f"  Check that the model name matches the checkpoint's size{size_hint} and that the file "
            f"is a {family} checkpoint from timm, Hugging Face, ml-cvnets or this package."
        )
        super().__init__("\n".join(lines))


def _preview(items: list[str], limit: int = 12) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


class TrainingError(RuntimeError):
    """Training had to stop; the message says why and what to do, and the last checkpoint is kept."""


class NonFiniteLossError(TrainingError):
    """The loss became NaN or infinite."""


class UnreadableImageError(TrainingError):
    """An image could not be decoded and ``strict`` asked to stop rather than skip it."""


def require_extra(extra: str, feature: str, *modules: str) -> None:
    """Import ``modules``, or raise an ImportError that names the ``pip install`` of ``extra``: the core
    install leaves the extras out, and a bare ModuleNotFoundError would not say which one to add."""
    for module in modules:
        try:
            # The package first, as an import statement does: a submodule still cached after the package
            # was taken out of sys.modules does not count as installed.
            importlib.import_module(module.partition(".")[0])
            importlib.import_module(module)
        except ImportError as err:
            raise ImportError(f"{feature} needs {module} ({err}): pip install 'mobilevit[{extra}]'") from err
