"""Where training images come from: an ImageFolder tree or Fashion-MNIST, the built-in default."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

from torchvision import datasets

from mobilevit.data import cache_dir

FASHION_MNIST = "fashion-mnist"
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def fashion_mnist_search_path() -> list[Path]:
    """``$MOBILEVIT_DATA``, then ``~/.cache/mobilevit``, then Debian's ``dataset-fashion-mnist``."""
    paths = [Path(os.environ["MOBILEVIT_DATA"])] if os.environ.get("MOBILEVIT_DATA") else []
    return [*paths, cache_dir(), DEBIAN_FASHION_MNIST]


def _raw_files(directory: Path) -> Path | None:
    """The folder holding the four idx files (plain or .gz) under ``directory``, in either the flat
    layout (Debian) or torchvision's ``FashionMNIST/raw`` layout."""
    for candidate in (directory, directory / "FashionMNIST" / "raw", directory / "fashion-mnist"):
        if all((candidate / f).exists() or (candidate / f"{f}.gz").exists() for f in FASHION_MNIST_FILES):
            return candidate
    return None


def _as_torchvision_root(raw: Path) -> Path:
    """A root that torchvision's FashionMNIST reads: ``ROOT/FashionMNIST/raw`` with the plain idx
    files, decompressed once into the cache when the found copy is gzipped or read-only."""
    if raw.name == "raw" and all((raw / f).exists() for f in FASHION_MNIST_FILES):
        return raw.parent.parent
    target = cache_dir() / "FashionMNIST" / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        if (target / name).exists():
            continue
        source = raw / name
        tmp = target / f".{name}.tmp"
        if source.exists():
            shutil.copyfile(source, tmp)
        else:
            with gzip.open(raw / f"{name}.gz", "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        tmp.replace(target / name)
    return target.parent.parent


def fashion_mnist(train: bool, download: bool = True) -> datasets.FashionMNIST:
    """Fashion-MNIST from the first place of :func:`fashion_mnist_search_path` that has it, else
    downloaded by torchvision into the cache (when the machine is online)."""
    for directory in fashion_mnist_search_path():
        raw = _raw_files(directory)
        if raw is not None:
            return datasets.FashionMNIST(_as_torchvision_root(raw), train=train)
    if download:
        try:
            return datasets.FashionMNIST(cache_dir(), train=train, download=True)
        except (OSError, RuntimeError) as err:
            reason = f" (download failed: {err})"
    else:
        reason = ""
    places = ", ".join(str(p) for p in fashion_mnist_search_path())
    raise FileNotFoundError(
        f"Fashion-MNIST not found in {places}{reason}. Install it with "
        "`sudo apt-get install dataset-fashion-mnist`, or put the four idx files in $MOBILEVIT_DATA."
    )


def image_folder(root: str | os.PathLike, split: str) -> datasets.ImageFolder:
    """``root/split`` as an ImageFolder (one folder per class)."""
    path = Path(root) / split
    if not path.is_dir():
        raise FileNotFoundError(
            f"{path} not found: --data expects a folder with train/ and val/, each holding one folder per class."
        )
    return datasets.ImageFolder(path)
