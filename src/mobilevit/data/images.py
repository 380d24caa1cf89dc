"""Reading user images for prediction: fully decoded, RGB, and resized or preprocessed as the model
was evaluated."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from mobilevit.data.transforms import pretrained_transform

READ_ERRORS = (OSError, ValueError, Image.DecompressionBombError)
WHOLE_IMAGE_INTERPOLATION = "bilinear"  # resized_input's; the web page resizes the same way


def read_image(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode ``path``, so that a truncated file fails here rather than later."""
    with Image.open(path) as image:
        image.load()  # leaving the block closes the file only: the decoded pixels stay
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as RGB: grayscale is repeated, transparent pixels are laid on white (their stored
    colour is often arbitrary)."""
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return image.convert("RGB")


def read_error(path: str | os.PathLike, err: Exception) -> dict[str, str]:
    return {"image": str(path), "error": f"cannot read {path}: {err}"}


def readable_images(
    paths: Sequence[str | os.PathLike], errors: list[dict[str, str]]
) -> Iterator[tuple[str, str, Image.Image]]:
    """``(path, stem, RGB image)`` of each readable file, one at a time (a long list of photos is never
    held in memory); unreadable ones are appended to ``errors``. Stems are made unique (``x``,
    ``x_2``...) so that ``a/x.jpg`` and ``b/x.png`` do not overwrite each other's outputs."""
    seen: dict[str, int] = {}
    for path in paths:
        try:
            image = to_rgb(read_image(path))
        except READ_ERRORS as err:
            errors.append(read_error(path, err))
            continue
        stem = Path(path).stem
        seen[stem] = seen.get(stem, 0) + 1
        yield str(path), stem if seen[stem] == 1 else f"{stem}_{seen[stem]}", image


def preprocess(image: Image.Image, cfg: Mapping[str, Any]) -> torch.Tensor:
    """A [3, H, W] model input from ``image`` (any mode) as ``cfg`` (a ``pretrained_cfg``) describes."""
    return pretrained_transform(cfg)(to_rgb(image))


def resized_input(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """[3, *size] float RGB in [0, 1]: the whole image resized, in the order the segmentation and
    detection evaluation transforms use (antialiased uint8 resize, then scaling), so predictions
    match the evaluated model."""
    mode = TF.InterpolationMode(WHOLE_IMAGE_INTERPOLATION)
    resized = TF.resize(TF.pil_to_tensor(image), list(size), interpolation=mode, antialias=True)
    return TF.to_dtype(resized, torch.float32, scale=True)
