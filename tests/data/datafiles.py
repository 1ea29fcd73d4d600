"""Writers for tiny on-disk fixtures (shared by conftest.py and the tests), and a small data module
over the folder fixture."""

from pathlib import Path

import numpy as np
from PIL import Image

from segformer.data.folder import FolderDataModule

H, W = 24, 32  # fixture image size


def write_image(path: Path, seed: int = 0) -> None:
    """Random RGB image; JPEG or PNG by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_mask(path: Path, mask: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Index PNG: mode P with `palette` (like VOC), else mode L."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8))  # mode L
    if palette is not None:
        image.putpalette(palette.ravel().tolist())  # L -> P, indices unchanged
    image.save(path)


def raw_mask(values: list[int], seed: int = 0) -> np.ndarray:
    """(H, W) mask made of vertical bands holding every value of `values`, then random labels."""
    rng = np.random.default_rng(seed)
    mask = rng.choice(values, size=(H, W)).astype(np.uint8)
    mask[:, : len(values)] = np.asarray(values, np.uint8)[None]  # every value present
    return mask


# raw label ids of the Cityscapes fixture: void (0, 1), road 7, car 26, bicycle 33, guard rail 14
CITYSCAPES_IDS = [0, 1, 7, 14, 26, 33]


FOLDER_PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)


def folder_dm(root: Path, **kwargs) -> FolderDataModule:
    defaults = {"batch_size": 2, "num_workers": 0, "crop_size": 16, "scale": (32, 24)}
    return FolderDataModule(root, classes=["bg", "a", "b"], **{**defaults, **kwargs})
