"""Finding Fashion-MNIST (Debian's package, $MOBILEVIT_DATA, the cache), ImageFolder, transforms."""

from __future__ import annotations

import gzip
import shutil

import pytest
import torch
from PIL import Image

from mobilevit.data import classification as classification_data
from mobilevit.data.transforms import MultiScaleDataset, collate_skipping, eval_transform

DEBIAN = classification_data.DEBIAN_FASHION_MNIST
needs_debian_data = pytest.mark.skipif(
    not DEBIAN.is_dir(),
    reason=f"{DEBIAN} missing: install Debian's dataset-fashion-mnist (scripts/env.sh does as root)",
)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MOBILEVIT_DATA", raising=False)
    return tmp_path


@needs_debian_data
def test_debian_package_is_found_and_read(isolated_cache):
    train = classification_data.fashion_mnist(train=True, download=False)
    test = classification_data.fashion_mnist(train=False, download=False)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.classes[0] == "T-shirt/top" and len(train.classes) == 10
    image, label = train[0]
    assert image.size == (28, 28) and image.mode == "L" and 0 <= label < 10
    labels = torch.as_tensor(test.targets)
    assert torch.bincount(labels).tolist() == [1000] * 10  # the real test set is balanced
    # The gzipped Debian copy was decompressed once into the cache for torchvision.
    assert (isolated_cache / "cache" / "mobilevit" / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte").exists()


@needs_debian_data
def test_mobilevit_data_comes_first(isolated_cache, monkeypatch):
    mine = isolated_cache / "mine"
    mine.mkdir()
    for name in classification_data.FASHION_MNIST_FILES:
        shutil.copy(DEBIAN / f"{name}.gz", mine / f"{name}.gz")
    monkeypatch.setenv("MOBILEVIT_DATA", str(mine))
    assert classification_data.fashion_mnist_search_path()[0] == mine
    assert len(classification_data.fashion_mnist(train=False, download=False)) == 10_000


def test_missing_dataset_says_how_to_get_it(isolated_cache, monkeypatch):
    monkeypatch.setattr(classification_data, "DEBIAN_FASHION_MNIST", isolated_cache / "nowhere")
    with pytest.raises(FileNotFoundError, match="Fashion-MNIST not found.*apt-get install dataset-fashion-mnist"):
        classification_data.fashion_mnist(train=True, download=False)


def test_flat_gz_layout_is_recognised(tmp_path):
    for name in classification_data.FASHION_MNIST_FILES:
        with gzip.open(tmp_path / f"{name}.gz", "wb") as f:
            f.write(b"")
    assert classification_data._raw_files(tmp_path) == tmp_path
    assert classification_data._raw_files(tmp_path / "missing") is None


def test_image_folder_needs_the_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="expects a folder with train/ and val/"):
        classification_data.image_folder(tmp_path, "train")


def test_grayscale_becomes_rgb_at_the_sampled_size():
    gray = [(Image.new("L", (28, 28), 128), 3)]
    sample, label = MultiScaleDataset(gray)[(48, 32, 0)]
    assert sample.shape == (3, 48, 32) and sample.dtype == torch.float32 and label == 3
    assert torch.allclose(sample[0], sample[1]) and 0 <= sample.min() <= sample.max() <= 1
    assert eval_transform(32)(gray[0][0]).shape == (3, 32, 32)


def test_random_erasing_blanks_one_rectangle_only_when_asked():
    white = [(Image.new("L", (28, 28), 255), 0)]
    plain, _ = MultiScaleDataset(white)[(32, 32, 0)]
    assert bool((plain == 1).all())
    torch.manual_seed(0)
    erased, _ = MultiScaleDataset(white, erasing=1.0)[(32, 32, 0)]
    rows, cols = (erased[0] == 0).nonzero(as_tuple=True)
    assert rows.numel() > 0 and bool((erased[:, erased[0] == 0] == 0).all())  # every channel, same pixels
    box = erased[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
    assert bool((box == 0).all()) and rows.numel() == box.numel()  # one filled rectangle
    assert bool((erased[erased != 0] == 1).all())


def test_collate_drops_unreadable_samples_and_counts_them():
    good = (torch.zeros(3, 8, 8), 1)
    images, labels, skipped = collate_skipping([good, None, good])
    assert images.shape == (2, 3, 8, 8) and labels.tolist() == [1, 1] and skipped == 1
    assert collate_skipping([None])[2] == 1
