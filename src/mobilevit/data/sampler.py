"""The paper's multi-scale sampler with variable batch size (Section 4 of the paper).

Each step draws one crop size; the batch size scales inversely with its pixel count so that every
batch holds about as many pixels as ``base_batch_size`` images of ``base_size``. Small crops come
in big batches, which means fewer optimizer steps per epoch and faster epochs. Large crops come in
small batches, but never below a floor (a quarter of ``base_batch_size`` by default): a range far
above the base size (160-320 crops around a base of 32) would otherwise train on single images,
with BatchNorm statistics of one sample. The paper's 160-320 around 256 stays above the floor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

Batch = list[tuple[int, int, int]]


def default_min_batch_size(base_batch_size: int) -> int:
    """The floor of the variable batch size: a quarter of the base batch size, at least 1."""
    return max(1, base_batch_size // 4)


def scale_batch_pairs(
    base_size: int,
    base_batch_size: int,
    min_size: int,
    max_size: int,
    num_scales: int,
    divisor: int,
    min_batch_size: int | None = None,
) -> list[tuple[int, int]]:
    """``(size, batch size)`` pairs, sorted: sizes are ``linspace(min_size, max_size, num_scales)``
    rounded to the nearest multiple of ``divisor``, plus ``base_size``; batch sizes are
    ``floor(base_size**2 * base_batch_size / size**2)`` (as the official code), at least
    ``min_batch_size`` (default :func:`default_min_batch_size`)."""
    floor = default_min_batch_size(base_batch_size) if min_batch_size is None else max(1, min_batch_size)
    steps = torch.linspace(min_size, max_size, num_scales).tolist()
    sizes = {max(divisor, int(s / divisor + 0.5) * divisor) for s in steps} | {base_size}
    pixels = base_size * base_size * base_batch_size
    return [(s, max(floor, int(pixels / (s * s)))) for s in sorted(sizes)]


class MultiScaleBatchSampler(torch.utils.data.Sampler[Batch]):
    """Yields batches as lists of ``(height, width, index)``; every tuple of a batch shares one size.

    With ``num_replicas`` ranks, every rank draws the same sizes in the same order (the generator
    is seeded with ``seed + epoch``) and yields the same number of batches, while the indices are
    split into disjoint shares that together cover the dataset (wrapping around to pad). The order
    is deterministic given ``(seed, epoch)``, and ``state_dict``/``load_state_dict`` resume an
    epoch with exactly the batches that remained.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        base_size: int = 256,
        base_batch_size: int = 128,
        min_size: int = 160,
        max_size: int = 320,
        num_scales: int = 5,
        divisor: int = 32,
        min_batch_size: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size} and {max_size}")
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.num_samples = num_samples
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.scales = scale_batch_pairs(
            base_size, base_batch_size, min_size, max_size, num_scales, divisor, min_batch_size
        )
        self.min_batch_size = self.scales[-1][1] if min_batch_size is None else max(1, min_batch_size)
        self.epoch = 0
        self._skip = 0  # batches of this epoch already consumed before a resume
        self._yielded = 0

    @property
    def resume_offset(self) -> int:
        """Batches of the current epoch that the next iteration skips (set by load_state_dict)."""
        return self._skip

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._skip = self._yielded = 0
        self.epoch = epoch

    def _indices(self) -> list[int]:
        """This rank's share of the epoch's (shuffled, wrap-around padded) indices."""
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=gen).tolist()
        else:
            order = list(range(self.num_samples))
        total = -(-self.num_samples // self.num_replicas) * self.num_replicas
        while len(order) < total:
            order += order[: total - len(order)]
        return order[self.rank : total : self.num_replicas]

    def _plan(self) -> list[Batch]:
        """Every batch of the epoch for this rank; the size draws are identical on all ranks."""
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        indices = self._indices()
        batches, start = [], 0
        while start < len(indices):
            size, batch_size = self.scales[int(torch.randint(len(self.scales), (1,), generator=gen))]
            chunk = indices[start : start + batch_size]
            start += batch_size
            if len(chunk) < batch_size and self.drop_last:
                break
            if len(chunk) < min(max(2, self.min_batch_size // 2), batch_size) and batches:
                # A small remainder at the epoch's end joins the previous batch, at its size: a batch
                # of one image cannot train BatchNorm (1x1 features at the last stage are an error).
                previous = batches[-1][0][0]
                batches[-1].extend((previous, previous, i) for i in chunk)
                break
            batches.append([(size, size, i) for i in chunk])
        return batches

    def __iter__(self) -> Iterator[Batch]:
        plan = self._plan()[self._skip :]
        self._yielded, self._skip = self._skip, 0  # counts from the start of the epoch
        return self._count(plan)

    def _count(self, plan: list[Batch]) -> Iterator[Batch]:
        for batch in plan:
            self._yielded += 1
            yield batch

    def __len__(self) -> int:
        return len(self._plan()) - self._skip

    def state_dict(self, batches_done: int | None = None) -> dict[str, Any]:
        """Where the epoch stands. Pass ``batches_done`` when a DataLoader prefetches ahead of
        training; otherwise the number of batches yielded so far in this epoch is used."""
        done = self._yielded if batches_done is None else batches_done
        return {"epoch": self.epoch, "batches_done": done, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state["seed"])
        self._skip = int(state["batches_done"])
