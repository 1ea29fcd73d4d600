"""data/dataset.py: sample dicts from (image, mask) files."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import H, W, folder_dm, write_image, write_mask

from segformer.data.dataset import SegmentationDataset


def test_sample_dict(folder_root: Path):
    sample = folder_dm(folder_root).dataset("val", train=False)[0]
    assert set(sample) == {"image", "mask", "name"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (H, W)
    assert sample["name"] == "img0"


def test_mask_size_mismatch_names_both_files(tmp_path: Path):
    write_image(tmp_path / "a.png")
    write_mask(tmp_path / "a_mask.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ValueError, match=r"a_mask\.png"):
        SegmentationDataset([(tmp_path / "a.png", tmp_path / "a_mask.png")])[0]


def test_images_decoded_once_give_the_same_samples(folder_root: Path):
    """data.cache_images: the decoded copies give the samples reading the files gives, a
    transform writing into its input does not change them, and loader workers get them too."""
    cached, plain = folder_dm(folder_root, cache_images=True), folder_dm(folder_root)
    ds = cached.dataset("train", True)
    assert ds.decoded is not None and len(ds.decoded) == 4
    for key in [(0, 11), (3, 12), (1, 13)]:
        a, b = ds[key], plain.dataset("train", True)[key]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    image, mask = ds.read(2)
    image[:] = 0
    mask[:] = 0
    assert ds.decoded[2][0].any() and ds.decoded[2][1].any()
    # the files are not read again (workers included): removing them changes nothing
    for path in (folder_root / "images" / "train").iterdir():
        path.unlink()
    cached.num_workers = 2
    batch = next(iter(cached.train_dataloader()))
    assert batch["image"].shape[0] == 2
