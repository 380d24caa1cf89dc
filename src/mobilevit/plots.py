"""PNG figures of a run: loss and accuracy curves, and the confusion matrix of an evaluation.
matplotlib comes with the ``train`` extra; it is imported when a figure is drawn."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilevit.checkpoint_io import atomic_write
from mobilevit.errors import require_extra

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float) -> Figure:
    """A figure outside pyplot: no display backend to choose, no global state to close."""
    require_extra("train", "Plotting", "matplotlib")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))
    return path


def _label(key: str) -> str:
    """``val_top1`` -> ``top1``, ``val_ema_top1`` -> ``top1 (EMA)``."""
    name = key.removeprefix("val_")
    return f"{name.removeprefix('ema_')} (EMA)" if name.startswith("ema_") else name


def plot_curves(metrics: list[dict[str, Any]], path: Path, scores: Sequence[str] = ("val_top1", "val_top5")) -> Path:
    """Training (and validation, when measured) loss, and the validation ``scores`` (fractions:
    top-1, mIoU, mAP...), per epoch. Scores of the EMA weights (``val_ema_*``) are dashed beside
    those of the trained weights; losses among ``scores`` go to the loss panel."""
    epochs = [m["epoch"] for m in metrics]
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    ax_loss.plot(epochs, [m["train_loss"] for m in metrics], "o-", label="train")
    losses = [k for k in ("val_loss", *scores) if k.endswith("loss") and k in metrics[0]]
    for key in dict.fromkeys(losses):
        style = "o--" if key.startswith("val_ema_") else "o-"
        label = _label(key).replace("loss", "validation")
        ax_loss.plot(epochs, [m[key] for m in metrics], style, color="C1", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_loss.legend()
    colours: dict[str, str] = {}  # one per metric: the EMA's line is its dashed twin
    for key in scores:
        if not key.endswith("loss") and key in metrics[0]:
            style = "o--" if key.startswith("val_ema_") else "o-"
            colour = colours.setdefault(_label(key).removesuffix(" (EMA)"), f"C{len(colours)}")
            ax_acc.plot(epochs, [100 * m[key] for m in metrics], style, color=colour, label=_label(key))
    ax_acc.set(xlabel="epoch", ylabel="%", title="Validation")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    return _save(fig, path)


MAX_FIGURE_INCHES = 16.0
MAX_LABELLED_CLASSES = 40  # beyond this the class names would overlap: the axes show indices


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: prediction), counts annotated."""
    n = len(confusion)
    size = min(max(5.0, 0.6 * n), MAX_FIGURE_INCHES)  # ImageNet's 1000 classes: a picture, not a 600-inch one
    fig = _figure(size, size)
    ax = fig.subplots()
    rows = [max(1, sum(r)) for r in confusion]
    normalised = [[c / total for c in r] for r, total in zip(confusion, rows, strict=True)]
    ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    names = classes or [str(i) for i in range(n)]
    if n <= MAX_LABELLED_CLASSES:
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                colour = "white" if normalised[i][j] > 0.5 else "black"
                ax.text(j, i, confusion[i][j], ha="center", va="center", fontsize=7, color=colour)
    return _save(fig, path)
