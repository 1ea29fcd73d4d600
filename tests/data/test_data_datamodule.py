"""data/datamodule.py: splits, errors naming dataset and layout, loaders, worker seeding."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from datafiles import folder_dm, raw_mask, write_image, write_mask

from segformer.data.folder import FolderDataModule


def test_missing_root_names_path_dataset_and_layout(tmp_path: Path):
    with pytest.raises(FileNotFoundError) as err:
        folder_dm(tmp_path / "nowhere").setup("fit")
    assert "nowhere" in str(err.value) and "FolderDataModule" in str(err.value)
    assert "images/{split}" in str(err.value)


def test_missing_split_folder(folder_root: Path):
    with pytest.raises(FileNotFoundError, match=r"'test'.*images.* not found"):
        folder_dm(folder_root).setup("test")


def test_empty_split(folder_root: Path):
    (folder_root / "images" / "test").mkdir()
    (folder_root / "masks" / "test").mkdir()
    with pytest.raises(ValueError, match=r"'test'.*empty"):
        folder_dm(folder_root).setup("test")


def test_train_split_smaller_than_a_batch(folder_root: Path):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        folder_dm(folder_root, batch_size=8).train_dataloader()


def test_loader_settings(folder_root: Path):
    dm = FolderDataModule(folder_root, classes=["bg", "a", "b"], batch_size=2, num_workers=1)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.drop_last and train.persistent_workers and not val.drop_last
    assert val.batch_size == 1 and train.batch_size == 2


def _first_batches(root: Path, seed: int) -> list[torch.Tensor]:
    dm = folder_dm(root, batch_size=1, num_workers=2, seed=seed, ratio_range=(0.5, 2.0))
    loader = dm.train_dataloader()
    return [batch["image"] for batch, _ in zip(loader, range(4), strict=False)]


def test_workers_are_seeded_distinctly_and_reproducibly(tmp_path: Path):
    for i in range(4):  # identical images: any difference comes from augmentation
        write_image(tmp_path / "images" / "train" / f"{i}.png", seed=0)
        write_mask(tmp_path / "masks" / "train" / f"{i}.png", raw_mask([0, 1, 2]))
    # a threaded OpenCV call in this process first: forked workers must not deadlock on its pool
    cv2.resize(np.zeros((1024, 2048, 3), np.uint8), (1000, 500))
    a, b, c = _first_batches(tmp_path, 0), _first_batches(tmp_path, 0), _first_batches(tmp_path, 1)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # same seed
    assert not torch.equal(a[0], a[1])  # batches 0 and 1 come from workers 0 and 1
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))  # other seed
