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
