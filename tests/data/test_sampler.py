"""The multi-scale variable-batch sampler: sizes, batch sizes, determinism, ranks and resuming."""

from __future__ import annotations

from collections import Counter
from itertools import islice

import pytest

from mobilevit.data import MultiScaleBatchSampler
from mobilevit.data.sampler import scale_batch_pairs


def test_default_scales_are_the_papers():
    sampler = MultiScaleBatchSampler(1000)
    # The reference: sizes {160, 192, 256, 288, 320} with 256*256*128 / (H*W) images each (floored).
    expected_sizes = [160, 192, 256, 288, 320]
    assert [s for s, _ in sampler.scales] == expected_sizes
    assert [b for _, b in sampler.scales] == [256 * 256 * 128 // (s * s) for s in expected_sizes]
    assert sampler.scales == [(160, 327), (192, 227), (256, 128), (288, 101), (320, 81)]


def test_pixels_per_batch_are_roughly_constant():
    base = 256 * 256 * 128
    for size, batch in scale_batch_pairs(256, 128, 128, 384, 7, 32):
        assert abs(size * size * batch - base) / base < 0.02 + size * size / base


def test_batch_size_has_a_floor():
    # 160-320 crops around a base of 32 would be 1-5 images per batch; the floor is a quarter of 128.
    pairs = scale_batch_pairs(32, 128, 160, 320, 5, 32)
    assert [b for _, b in pairs] == [128, 32, 32, 32, 32, 32]
    assert scale_batch_pairs(32, 128, 160, 320, 5, 32, min_batch_size=1)[-1] == (320, 1)
    assert MultiScaleBatchSampler(10, base_size=32, base_batch_size=6, min_size=160, max_size=160).scales == [
        (32, 6),
        (160, 1),
    ]


@pytest.mark.parametrize("num_samples", [129, 130, 209, 250, 333])
def test_a_small_remainder_joins_the_previous_batch(num_samples):
    """A last batch of one image would fail in BatchNorm (1x1 features at 32x32): it is merged."""
    for seed in range(8):
        sampler = MultiScaleBatchSampler(
            num_samples, base_size=32, base_batch_size=128, min_size=32, max_size=40, divisor=8, seed=seed
        )
        batches = list(sampler)
        assert sorted(i for b in batches for _, _, i in b) == list(range(num_samples))
        assert min(len(b) for b in batches) >= 40  # half the smallest batch (81 at 40x40)
        assert all(len({(h, w) for h, w, _ in b}) == 1 for b in batches)
        assert len(sampler) == len(batches)


def test_batches_share_one_size_and_cover_the_data_once():
    sampler = MultiScaleBatchSampler(2000, base_batch_size=16, seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    for batch in batches:
        assert len({(h, w) for h, w, _ in batch}) == 1
        assert (batch[0][0], len(batch)) in sampler.scales or batch is batches[-1]
    assert sorted(i for b in batches for _, _, i in b) == list(range(2000))
    assert len({b[0][0] for b in batches}) > 1  # several sizes are drawn


def test_deterministic_per_seed_and_epoch():
    a = MultiScaleBatchSampler(500, base_batch_size=8, seed=1)
    b = MultiScaleBatchSampler(500, base_batch_size=8, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    assert list(MultiScaleBatchSampler(500, base_batch_size=8, seed=2)) != first


def test_no_shuffle_keeps_order():
    batches = list(MultiScaleBatchSampler(100, base_batch_size=4, shuffle=False))
    assert [i for b in batches for _, _, i in b] == list(range(100))


@pytest.mark.parametrize(("num_samples", "replicas"), [(1000, 2), (1001, 2), (997, 3), (5, 4)])
def test_ranks_draw_the_same_sizes_and_split_the_indices(num_samples, replicas):
    samplers = [
        MultiScaleBatchSampler(num_samples, base_batch_size=8, num_replicas=replicas, rank=r, seed=5)
        for r in range(replicas)
    ]
    for epoch in range(2):
        for s in samplers:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert len({len(batches) for batches in per_rank}) == 1
        assert all(len(s) == len(per_rank[0]) for s in samplers)
        for step in zip(*per_rank, strict=True):
            assert len({(b[0][0], len(b)) for b in step}) == 1  # same size and batch size everywhere
        seen = Counter(i for batches in per_rank for b in batches for _, _, i in b)
        assert set(seen) == set(range(num_samples))  # together they cover the dataset
        padded = -(-num_samples // replicas) * replicas
        assert sum(seen.values()) == padded  # repeats are only the wrap-around padding


def test_drop_last_yields_only_full_batches():
    sampler = MultiScaleBatchSampler(1001, base_batch_size=16, drop_last=True, seed=4)
    batches = list(sampler)
    assert batches and all((b[0][0], len(b)) in sampler.scales for b in batches)
    assert len(sampler) == len(batches)


@pytest.mark.parametrize("stop_after", [0, 1, 7])
def test_resume_mid_epoch_yields_exactly_the_remaining_batches(stop_after):
    sampler = MultiScaleBatchSampler(3000, base_batch_size=16, seed=9)
    sampler.set_epoch(4)
    full = list(sampler)
    consumed = list(islice(iter(sampler), stop_after))
    state = sampler.state_dict()
    assert state == {"epoch": 4, "batches_done": stop_after, "seed": 9}

    resumed = MultiScaleBatchSampler(3000, base_batch_size=16)
    resumed.load_state_dict(state)
    assert len(resumed) == len(full) - stop_after
    assert consumed + list(resumed) == full
    assert list(resumed) == full  # the next pass over the same epoch is whole again
    resumed.set_epoch(5)
    assert len(list(resumed)) == len(resumed)


def test_state_dict_with_explicit_progress():
    sampler = MultiScaleBatchSampler(100, base_batch_size=4)
    assert sampler.state_dict(batches_done=3)["batches_done"] == 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_samples": 0}, "num_samples must be positive"),
        ({"num_samples": 10, "num_replicas": 2, "rank": 2}, "rank 2 is outside"),
        ({"num_samples": 10, "min_size": 300, "max_size": 200}, "min_size <= max_size"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiScaleBatchSampler(**kwargs)
