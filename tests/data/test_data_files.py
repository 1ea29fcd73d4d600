"""data/files.py: images paired with masks by name (through the folder layout)."""

import shutil
from pathlib import Path

import pytest
from datafiles import folder_dm


def test_image_without_mask_names_the_image(folder_root: Path):
    (folder_root / "masks" / "train" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img1\.jpg has no mask"):
        folder_dm(folder_root).setup("fit")


def test_mask_without_image_names_the_mask(folder_root: Path):
    shutil.copy(folder_root / "masks/train/img0.png", folder_root / "masks/train/stray.png")
    with pytest.raises(FileNotFoundError, match=r"stray\.png has no image"):
        folder_dm(folder_root).setup("fit")
