"""A deterministic, resumable data order shared by all processes.

:class:`ResumableSampler` is a :class:`torch.utils.data.DistributedSampler` (same partition:
the epoch's permutation, drawn from a generator seeded with ``seed + epoch``, is cut to a
multiple of the number of processes and process r takes positions r, r+W, r+2W, …) that can
start part-way through an epoch: :meth:`set_position` skips the first ``start`` indices of
this process's share. A run resumed from a checkpoint therefore sees exactly the samples,
in exactly the order, that an uninterrupted run would have seen.

With one process and W processes the union of the first micro-batches of all processes
is the first ``W·b`` indices of the permutation, so a W-process run sees the same samples per
step as a one-process run with the full batch.
"""
from __future__ import annotations

from typing import Iterator, Sized

from torch.utils.data import DistributedSampler

__all__ = ["ResumableSampler"]


class ResumableSampler(DistributedSampler):
    """DistributedSampler with an explicit rank / world size and a start offset.

    Args:
        dataset: anything with ``len``.
        world_size, rank: this process's place (1 and 0 without distribution).
        shuffle: permute each epoch (order = f(seed, epoch)); else dataset order.
        seed: base seed of the permutation.

    ``drop_last`` is always on: every process gets ``len(dataset) // world_size`` indices
    per epoch, so all processes run the same number of steps.
    """

    def __init__(self, dataset: Sized, world_size: int = 1, rank: int = 0, shuffle: bool = True,
                 seed: int = 0) -> None:
        if len(dataset) < world_size:
            raise ValueError(f"the dataset has {len(dataset)} samples, fewer than the {world_size} processes")
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_position(self, epoch: int, start: int = 0) -> None:
        """Continue epoch ``epoch`` after this process's first ``start`` indices."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} outside 0..{self.num_samples}")
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
