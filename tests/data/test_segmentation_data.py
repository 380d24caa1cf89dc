"""VOC segmentation data on the synthetic shapes: layouts, joint transforms, bad masks, skipping."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from mobilevit.data.sampler import MultiScaleBatchSampler
from mobilevit.data.segmentation import (
    VOC_CLASSES,
    VOC_PALETTE,
    SegmentationDataset,
    SegmentationEvalDataset,
    collate_segmentation,
    voc_segmentation,
)
from mobilevit.data.synthetic import SHAPES_CLASSES, make_shapes
from mobilevit.errors import UnreadableImageError

SIZE = (96, 128)
IDS = {0, 1, 2, 255}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes(tmp_path_factory.mktemp("shapes"), 6, 3, SIZE)


@pytest.fixture
def fresh(tmp_path):
    """A dataset of its own, for tests that break files."""
    return make_shapes(tmp_path, 2, 1, SIZE)


def devkit(root):
    return root / "VOCdevkit" / "VOC2012"


def save_mask(path, array):
    mask = Image.fromarray(array.astype(np.uint8), mode="P")
    mask.putpalette(VOC_PALETTE.tobytes())
    mask.save(path)


@pytest.mark.parametrize("where", ["", "VOCdevkit", "VOCdevkit/VOC2012"])
def test_root_is_the_devkit_parent_or_the_year_folder(shapes, where):
    dataset = voc_segmentation(shapes / where, "train")
    assert len(dataset) == 6 and dataset.classes == SHAPES_CLASSES
    image, mask = dataset[0]
    assert image.size == (SIZE[1], SIZE[0]) and isinstance(mask, tv_tensors.Mask) and mask.shape == (1, *SIZE)


def test_pickled_dataset_keeps_its_classes(shapes):  # as DataLoader workers started by spawn get it
    dataset = pickle.loads(pickle.dumps(voc_segmentation(shapes, "train")))
    assert dataset.classes == SHAPES_CLASSES and isinstance(dataset[0][1], tv_tensors.Mask)


def test_missing_layout_and_split_are_explained(shapes, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not a Pascal VOC folder.*VOCdevkit/VOC2012/"):
        voc_segmentation(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Segmentation/test\.txt"):
        voc_segmentation(shapes, "test")


def test_classes_are_vocs_without_classes_txt(fresh):
    (devkit(fresh) / "classes.txt").unlink()
    assert voc_segmentation(fresh, "val").classes == VOC_CLASSES and len(VOC_CLASSES) == 21


def test_classes_txt_must_start_with_background(fresh):
    (devkit(fresh) / "classes.txt").write_text("rectangle\nellipse\n")
    with pytest.raises(ValueError, match="'background' first"):
        voc_segmentation(fresh, "train")


def test_train_sample_has_the_sampled_size(shapes):
    dataset = SegmentationDataset(voc_segmentation(shapes, "train"))
    for index in range(6):
        image, mask = dataset[(64, 96, index)]
        assert image.shape == (3, 64, 96) and image.dtype == torch.float32 and 0 <= image.min() <= image.max() <= 1
        assert mask.shape == (64, 96) and mask.dtype == torch.int64 and set(mask.unique().tolist()) <= IDS


def test_crop_padding_is_ignored(shapes):
    torch.manual_seed(0)
    dataset = SegmentationDataset(voc_segmentation(shapes, "train"), scale=(0.5, 0.5))
    image, mask = dataset[(128, 128, 0)]  # shorter side 64: the image becomes 64x85, padded to 128x128
    padded = (mask == 255) & (image.sum(0) == 0)
    assert padded.sum() >= 128 * 128 - 64 * 86


class Halves(torch.utils.data.Dataset):
    """One image, dark on the left and bright on the right, labelled 1 and 2 accordingly."""

    classes = SHAPES_CLASSES

    def __len__(self):
        return 1

    def __getitem__(self, index):
        labels = np.ones((40, 60), np.uint8)
        labels[:, 30:] = 2
        image = Image.fromarray(np.stack([labels * 100 - 80] * 3, axis=-1).astype(np.uint8))
        return image, tv_tensors.Mask(torch.from_numpy(labels)[None])


def test_image_and_mask_move_together():
    torch.manual_seed(0)
    dataset = SegmentationDataset(Halves())
    flipped = set()
    for _ in range(20):
        image, mask = dataset[(32, 32, 0)]
        brightness = image.mean(0)
        if (mask == 1).any() and (mask == 2).any():
            assert brightness[mask == 2].mean() > brightness[mask == 1].mean() + 0.3  # 120 vs 20 of 255
            flipped.add(bool((mask == 2).nonzero()[:, 1].float().mean() < (mask == 1).nonzero()[:, 1].float().mean()))
    assert flipped == {False, True}


def test_eval_resizes_to_a_fixed_size(shapes):
    dataset = SegmentationEvalDataset(voc_segmentation(shapes, "val"), (80, 72))
    image, mask = dataset[0]
    assert image.shape == (3, 80, 72) and mask.shape == (80, 72) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= IDS  # nearest neighbour: no blended ids


def test_mask_of_another_size_is_an_error(fresh):
    save_mask(devkit(fresh) / "SegmentationClass" / "000001.png", np.zeros((64, 64)))
    dataset = voc_segmentation(fresh, "train")
    for wrapped, key in ((SegmentationDataset(dataset), (32, 32, 1)), (SegmentationEvalDataset(dataset, (32, 32)), 1)):
        with pytest.raises(ValueError, match=r"000001\.png: mask is 64x64 \(HxW\) but its image is 96x128"):
            wrapped[key]


def test_unknown_class_ids_are_an_error(fresh):
    labels = np.zeros(SIZE)
    labels[10:20, 10:20] = 7
    labels[30:40, 30:40] = 3
    save_mask(devkit(fresh) / "SegmentationClass" / "000000.png", labels)
    dataset = SegmentationDataset(voc_segmentation(fresh, "train"), strict=False)
    with pytest.raises(ValueError, match=r"unknown class ids \[3, 7\].*\[0, 3\) and 255, the ignore index"):
        dataset[(32, 32, 0)]


def test_unreadable_image_is_skipped_and_counted_unless_strict(fresh, caplog):
    (devkit(fresh) / "JPEGImages" / "000001.jpg").write_bytes(b"not a jpeg")
    dataset = voc_segmentation(fresh, "train")
    with caplog.at_level(logging.WARNING):
        batch = [SegmentationDataset(dataset)[(32, 32, i)] for i in range(2)]
    assert batch[1] is None and "000001.jpg" in caplog.text
    images, masks, skipped = collate_segmentation(batch)
    assert images.shape == (1, 3, 32, 32) and masks.shape == (1, 32, 32) and skipped == 1
    with pytest.raises(UnreadableImageError, match="000001.jpg"):
        SegmentationDataset(dataset, strict=True)[(32, 32, 1)]
    with pytest.raises(UnreadableImageError, match="evaluation needs them all"):
        SegmentationEvalDataset(dataset, (32, 32))[1]
    assert collate_segmentation([None])[2] == 1


def test_multiscale_sampler_batches(shapes):
    dataset = SegmentationDataset(voc_segmentation(shapes, "train"))
    sampler = MultiScaleBatchSampler(len(dataset), base_size=64, base_batch_size=2, min_size=32, max_size=96)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_segmentation)
    seen = 0
    for images, masks, skipped in loader:
        size = images.shape[-1]
        assert images.shape[1:] == (3, size, size) and masks.shape == (len(images), size, size)
        assert masks.dtype == torch.int64 and skipped == 0
        seen += len(images)
    assert seen == len(dataset)
