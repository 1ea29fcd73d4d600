"""The resumable training order and the unpadded evaluation shards."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from segformer.data import SyntheticDataModule
from segformer.data.sampler import ResumableSampler, ShardSampler


def test_epoch_order_is_a_permutation_split_across_ranks():
    ranks = [ResumableSampler(23, batch_size=3, seed=5, rank=r, world_size=2) for r in range(2)]
    keys = [list(s) for s in ranks]
    assert [len(k) for k in keys] == [len(s) for s in ranks] == [9, 9]  # 11 per rank, 3 batches
    indices = [i for k in keys for i, _ in k]
    assert len(set(indices)) == 18 and set(indices) <= set(range(23))  # no sample twice
    assert keys == [list(s) for s in ranks]  # a pure function of (seed, position)
    other = ResumableSampler(23, batch_size=3, seed=6)
    assert [i for i, _ in other] != [i for i, _ in ResumableSampler(23, batch_size=3, seed=5)]


def test_position_resumes_mid_epoch_and_advances_epochs():
    position = 0
    sampler = ResumableSampler(20, batch_size=4, seed=0, position=lambda: position)
    epoch0, epoch1 = sampler.epoch_keys(0), sampler.epoch_keys(1)
    assert list(sampler) == epoch0
    position = 2  # two batches consumed: the rest of epoch 0
    assert list(sampler) == epoch0[8:]
    position = 5  # a whole epoch (5 batches) consumed
    assert list(sampler) == epoch1
    assert [i for i, _ in epoch0] != [i for i, _ in epoch1]
    # the same index gets a fresh augmentation seed every epoch
    seeds0, seeds1 = dict(epoch0), dict(epoch1)
    assert all(seeds0[i] != seeds1[i] for i in seeds0)


def test_batches_do_not_depend_on_the_number_of_workers():
    """Augmentation seeds travel with the keys, so 0 or 2 workers give the same batches."""
    batches = []
    for workers in (0, 2):
        dm = SyntheticDataModule(num_train=12, image_size=32, batch_size=4, num_workers=workers)
        dm.setup("fit")
        batches.append([b["image"] for b in dm.train_dataloader()])
    assert len(batches[0]) == 3
    for a, b in zip(*batches, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_train_loader_resumes_where_the_trainer_left_off():
    dm = SyntheticDataModule(num_train=12, image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    trainer = SimpleNamespace(global_step=0, accumulate_grad_batches=1, global_rank=0, world_size=1)
    dm.trainer = trainer
    loader = dm.train_dataloader()
    full = [b["name"] for b in loader]  # epoch 0: 3 batches
    trainer.global_step = 3
    full += [b["name"] for b in loader]  # epoch 1
    assert full[:3] != full[3:]
    trainer.global_step = 4  # as restored from a checkpoint 1 batch into epoch 1
    assert [b["name"] for b in dm.train_dataloader()] == full[4:]


def test_shards_cover_every_sample_once():
    shards = [list(ShardSampler(7, rank, 2)) for rank in range(2)]
    assert shards == [[0, 2, 4, 6], [1, 3, 5]]
    assert sorted(i for s in shards for i in s) == list(range(7))
