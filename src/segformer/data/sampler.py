"""Samplers that make training resumable to the sample and evaluation exact under DDP.

``ResumableSampler`` makes the training order a pure function of (seed, position): epoch ``e``
is a permutation drawn from ``(seed, e)``, each rank takes every ``world_size``-th index of it,
and each sample carries its own augmentation seed drawn from ``(seed, e)``. An iterator starts
at ``position()``, the number of batches this rank has consumed, so a run resumed from a
mid-epoch checkpoint sees exactly the samples and augmentations the uninterrupted run would
have seen, whatever the number of DataLoader workers.

``ShardSampler`` splits an evaluation set across ranks without the padding of
``DistributedSampler`` (which repeats samples to even out the shards and so counts them twice
in a summed confusion matrix).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler

SampleKey = tuple[int, int]  # (dataset index, augmentation seed)


class ResumableSampler(Sampler[SampleKey]):
    """Yields ``(index, augmentation seed)`` keys for one epoch of ``batch_size`` batches
    (the incomplete last batch dropped, as ``drop_last=True``), starting at ``position()``."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        position: Callable[[], int] | None = None,
    ) -> None:
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.position = position or (lambda: 0)
        self.batches_per_epoch = size // world_size // batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def epoch_keys(self, epoch: int) -> list[SampleKey]:
        """This rank's keys of data epoch ``epoch``, in order."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.size)
        aug_seeds = rng.integers(2**63, size=self.size)  # per index, fresh every epoch
        mine = order[self.rank :: self.world_size][: len(self)]
        return [(int(i), int(aug_seeds[i])) for i in mine]

    def __iter__(self) -> Iterator[SampleKey]:
        if self.batches_per_epoch == 0:
            return iter(())
        epoch, batch = divmod(self.position(), self.batches_per_epoch)
        return iter(self.epoch_keys(epoch)[batch * self.batch_size :])


class ShardSampler(Sampler[int]):
    """Rank ``r`` of ``w`` takes indices ``r, r + w, ...``: every sample exactly once over all
    ranks (shards differ in length by at most one; nothing is padded or repeated)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)
