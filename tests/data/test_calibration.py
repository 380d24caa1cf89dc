"""Calibration images for int8 export (mobilevit.data.calibration): from folders, ImageFolder trees and
Fashion-MNIST."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mobilevit.data.calibration import calibration_images
from mobilevit.data.classification import fashion_mnist


def write_image(path, color, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_folder_of_images_spread_and_preprocessed(tmp_path):
    for i in range(6):
        write_image(tmp_path / "nested" / f"{i}.png", (40 * i, 0, 255))
    (tmp_path / "notes.txt").write_text("not an image")
    images = calibration_images(str(tmp_path), 3, (24, 32))
    assert images.shape == (3, 3, 24, 32) and images.dtype == torch.float32
    assert images[:, 0, 0, 0].mul(255).round().tolist() == [0, 80, 160]  # files 0, 2, 4
    assert images[:, 2].min() == 1.0


def test_imagefolder_root_uses_its_train_split(tmp_path):
    write_image(tmp_path / "train" / "cat" / "a.jpg", (255, 0, 0))
    write_image(tmp_path / "val" / "cat" / "b.jpg", (0, 255, 0))
    images = calibration_images(str(tmp_path), 64, (32, 32))
    assert images.shape == (1, 3, 32, 32)  # all there is
    assert images[0, 0].mean() > 0.9 and images[0, 1].mean() < 0.1


def test_fashion_mnist_is_rgb_at_the_requested_size():
    try:
        fashion_mnist(train=True, download=False)
    except FileNotFoundError:
        pytest.skip("Fashion-MNIST is not installed")
    images = calibration_images("fashion-mnist", 4, (32, 32))
    assert images.shape == (4, 3, 32, 32)
    torch.testing.assert_close(images[:, 0], images[:, 1])


def test_missing_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither 'fashion-mnist' nor a folder of images"):
        calibration_images(str(tmp_path / "missing"), 4, (32, 32))


def test_count_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="must be positive"):
        calibration_images(str(tmp_path), 0, (32, 32))


def test_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images"):
        calibration_images(str(tmp_path), 4, (32, 32))
