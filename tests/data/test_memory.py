"""The in-memory path against torchvision's own transforms: the same crops, the same validation images."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision import datasets
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from mobilevit.data.memory import (
    MAX_BYTES,
    InMemoryEval,
    InMemoryMultiScale,
    image_tensor,
    random_boxes,
    resized_crops,
)
from mobilevit.data.transforms import TransformedDataset, eval_transform
from mobilevit.testing import structured_images


class ArrayDataset(torch.utils.data.Dataset):
    """A stand-in for torchvision's MNIST family: ``.data`` (N, H, W) uint8, ``.targets``, PIL items."""

    def __init__(self, count: int = 12, size: int = 28) -> None:
        self.data = (structured_images(count, size, size)[:, 0] * 255).to(torch.uint8)
        self.targets = torch.arange(count) % 10

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return v2.functional.to_pil_image(self.data[index]), int(self.targets[index])


def test_image_tensor_takes_arrays_subsets_and_channels_last_layouts():
    dataset = ArrayDataset()
    images, labels = image_tensor(dataset)
    assert images.shape == (12, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.equal(labels, dataset.targets)
    images, labels = image_tensor(torch.utils.data.Subset(dataset, [3, 5]))
    assert torch.equal(images[:, 0], dataset.data[[3, 5]]) and labels.tolist() == [3, 5]
    dataset.data = torch.stack([dataset.data] * 3, dim=-1).numpy()  # (N, H, W, 3), as CIFAR keeps it
    dataset.targets = dataset.targets.tolist()
    images, _ = image_tensor(dataset)
    assert images.shape == (12, 3, 28, 28)


def test_datasets_read_from_files_or_too_large_stay_on_the_file_path(tmp_path):
    assert image_tensor(datasets.FakeData(size=4)) is None  # no .data
    dataset = ArrayDataset()
    dataset.data = dataset.data.float()
    assert image_tensor(dataset) is None
    dataset = ArrayDataset()
    dataset.data = dataset.data[:1].expand(MAX_BYTES // (28 * 28) + 1, 28, 28)  # a view: no memory is used
    dataset.targets = torch.zeros(len(dataset.data))
    assert image_tensor(dataset) is None


def test_crops_match_torchvisions_resized_crop():
    images, _ = image_tensor(ArrayDataset())
    boxes = torch.tensor([[0.0, 0, 28, 28], [2, 3, 27, 26], [5, 1, 25, 28]])
    ours = resized_crops(images[:3], boxes, (32, 32))
    for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        ref = TF.resized_crop(images[k], y1, x1, y2 - y1, x2 - x1, [32, 32], antialias=True).float() / 255
        # torchvision rounds to uint8 (1/255) and clamps at the crop's edge, roi_align reads the pixel beyond it
        assert (ours[k] - ref).abs().mean() < 3e-3
        assert (ours[k, :, 2:-2, 2:-2] - ref[:, 2:-2, 2:-2]).abs().max() < 3 / 255


def test_boxes_follow_random_resized_crops_distribution():
    torch.manual_seed(0)
    boxes = random_boxes(20000, 28, 28, (0.5, 1.0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert boxes[:, :2].min() >= 0 and boxes[:, 2].max() <= 28 and boxes[:, 3].max() <= 28
    area = w * h / 28**2
    assert area.min() >= 0.45 and area.max() <= 1.0  # 0.5 less rounding, as torchvision rounds
    ratio = torch.log(w / h)
    assert ratio.abs().max() <= math.log(4 / 3) + 0.1
    reference = v2.RandomResizedCrop(32, scale=(0.5, 1.0))
    params = [reference.make_params([torch.zeros(1, 28, 28)]) for _ in range(4000)]
    ref_area = torch.tensor([p["height"] * p["width"] for p in params], dtype=torch.float) / 28**2
    assert abs(area.mean() - ref_area.mean()) < 0.01


def test_a_batch_is_cropped_flipped_and_repeated_to_rgb():
    images, labels = image_tensor(ArrayDataset())
    dataset = InMemoryMultiScale(images, labels, scale=(1.0, 1.0))  # whole images: only the flip is random
    torch.manual_seed(0)
    batch = dataset.__getitems__([(56, 42, i) for i in range(12)])  # upscaled: plain bilinear
    assert [label for _, label in batch] == labels.tolist()
    whole = images.float() / 255
    flipped = 0
    for (image, _), original in zip(batch, whole, strict=True):
        assert image.shape == (3, 56, 42) and torch.equal(image[0], image[2])
        ref = TF.resize(original, [56, 42], antialias=False)
        flips = (image[0] - ref[0].flip(-1)).abs().max() < 1e-4
        assert flips or (image[0] - ref[0]).abs().max() < 1e-4
        flipped += bool(flips)
    assert 0 < flipped < 12
    assert dataset[(28, 24, 0)][0].shape == (3, 28, 24)


def test_validation_images_equal_the_per_image_transform():
    dataset = ArrayDataset()
    held = InMemoryEval(*image_tensor(dataset), img_size=32)
    reference = TransformedDataset(dataset, eval_transform(32))
    assert len(held) == len(reference)
    for index in range(len(dataset)):
        ours, label = held[index]
        ref, ref_label = reference[index]
        assert label == ref_label
        torch.testing.assert_close(ours, ref, atol=0, rtol=0)


@pytest.mark.parametrize("workers", [0, 1])
def test_the_dataloader_hands_whole_batches_to_getitems(workers):
    images, labels = image_tensor(ArrayDataset())
    dataset = InMemoryMultiScale(images, labels, scale=(0.8, 1.0), erasing=0.5)
    batches = [[(32, 32, i) for i in range(6)], [(24, 24, i) for i in range(6, 12)]]
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=batches, num_workers=workers)
    shapes = [tuple(images.shape) for images, _ in loader]
    assert shapes == [(6, 3, 32, 32), (6, 3, 24, 24)]
