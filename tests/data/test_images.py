"""Image files for prediction (mobilevit.data.images): reading real photos (scikit-image's samples) and
preprocessing them as a classifier's ``pretrained_cfg`` says."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from mobilevit.data.images import preprocess, read_image


def test_preprocess_matches_a_manual_computation(photos):
    """Shorter side to size / crop_pct, centre crop, [0, 1], BGR, then mean/std in the model's channel order."""
    cfg = {
        "input_size": (3, 48, 64),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "channel_order": "BGR",
        "mean": (0.4, 0.5, 0.6),
        "std": (0.2, 0.25, 0.3),
    }
    image = read_image(photos["chelsea"])  # 451 x 300: landscape
    short = int(64 / 0.875)
    long = int(short * image.width / image.height)
    resized = np.asarray(image.resize((long, short), Image.BILINEAR), dtype=np.float64) / 255
    top, left = round((short - 48) / 2), round((long - 64) / 2)
    crop = resized[top : top + 48, left : left + 64, ::-1]  # RGB -> BGR
    expected = (crop - np.array(cfg["mean"])) / np.array(cfg["std"])
    actual = preprocess(image, cfg).permute(1, 2, 0).double().numpy()
    assert actual.shape == (48, 64, 3)
    assert np.abs(actual - expected).max() <= 2 / 255 / min(cfg["std"])  # PIL and torchvision round apart


def test_grayscale_and_transparent_images_become_rgb(photos):
    cfg = {"input_size": (3, 32, 32)}
    gray = preprocess(read_image(photos["camera"]), cfg)
    assert gray.shape == (3, 32, 32) and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    clear = Image.fromarray(np.zeros((40, 40, 4), np.uint8))  # fully transparent black
    assert torch.equal(preprocess(clear, cfg), torch.ones(3, 32, 32))  # laid on white
    alpha = 128 / 255
    expected = alpha * preprocess(read_image(photos["coffee"]), cfg) + (1 - alpha)  # the photo on white
    assert (preprocess(read_image(photos["rgba"]), cfg) - expected).abs().max() <= 3 / 255
