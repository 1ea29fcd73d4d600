import numpy as np
import torch

from segformer.data.synthetic import SyntheticDataModule, SyntheticDataset, generate


def test_samples_are_deterministic_per_seed_and_index():
    a, b = SyntheticDataset(8, 64, seed=3), SyntheticDataset(8, 64, seed=3)
    assert torch.equal(a[5]["image"], b[5]["image"]) and torch.equal(a[5]["mask"], b[5]["mask"])
    assert not torch.equal(a[5]["image"], a[6]["image"])
    assert not torch.equal(a[5]["image"], SyntheticDataset(8, 64, seed=4)[5]["image"])
    assert not torch.equal(a[5]["image"], SyntheticDataset(8, 64, seed=3, split_id=1)[5]["image"])


def test_shapes_and_value_ranges():
    dm = SyntheticDataModule(num_train=8, num_val=4, image_size=64, batch_size=4, num_workers=0)
    val = dm.dataset("val", train=False)[0]
    assert val["image"].shape == (3, 64, 64) and val["image"].dtype == torch.float32
    assert val["mask"].shape == (64, 64) and val["mask"].dtype == torch.int64
    assert val["image"].min() > -2.2 and val["image"].max() < 2.7  # ImageNet-normalised 0..255
    assert set(val["mask"].unique().tolist()) <= set(range(6))
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    assert set(batch["mask"].unique().tolist()) <= set(range(6)) | {255}  # 255: padding


def test_every_class_appears_and_objects_are_not_tiny():
    masks = [generate(np.random.default_rng([0, 0, i]), 128)[1] for i in range(8)]
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=6)
    assert (counts > 0).all() and len(counts) == 6
    assert counts[1:].sum() / counts.sum() > 0.1  # objects cover a real share of the pixels


def test_metadata_and_splits():
    dm = SyntheticDataModule(num_train=4, num_val=2, num_test=3, image_size=32, num_workers=0)
    assert dm.num_classes == 6 and dm.class_names[0] == "background"
    assert dm.palette.shape == (6, 3)
    assert [len(dm.dataset(s, train=False)) for s in ("train", "val", "test")] == [4, 2, 3]
