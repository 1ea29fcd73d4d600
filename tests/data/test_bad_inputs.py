"""Bad dataset files fail with one line naming the file, the value and what was expected.

Each case builds a two-sample folder dataset with exactly one defect and reads it the way
training does (the datamodule's loader), in a DataLoader worker for the worker cases.
"""

import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from datafiles import FOLDER_PALETTE, H, W, raw_mask, write_image, write_mask
from PIL import Image

from segformer.data.folder import FolderDataModule

CLASSES = ["bg", "a", "b"]


def clean_folder(root: Path) -> Path:
    """images/train/img{0,1}.png + masks/train/img{0,1}.png, ids 0-2 and 255."""
    for i in range(2):
        write_image(root / "images" / "train" / f"img{i}.png", seed=i)
        write_mask(root / "masks" / "train" / f"img{i}.png", raw_mask([0, 1, 2, 255]))
    return root


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def jpeg_image(root: Path) -> None:
    (root / "images/train/img1.png").unlink()
    write_image(root / "images/train/img1.jpg", seed=1)
    cut_in_half(root / "images/train/img1.jpg")


def empty_split(root: Path) -> None:
    for folder in ("images", "masks"):
        for path in (root / folder / "train").iterdir():
            path.unlink()


def read_split(root: Path, num_workers: int = 0) -> None:
    """Every sample through the datamodule's eval loader (val_split pointed at train)."""
    dm = FolderDataModule(root, classes=CLASSES, val_split="train", num_workers=num_workers)
    for _ in dm.val_dataloader():
        pass


Case = tuple[Callable[[Path], object], type[Exception], str, Callable[..., None]]
# defect, exception, message pattern (file and value; {root} = the dataset root), reader
CASES: dict[str, Case] = {
    "missing root": (
        shutil.rmtree,
        FileNotFoundError,
        r"dataset root {root} not found",
        read_split,
    ),
    "empty split": (empty_split, ValueError, r"split 'train' under {root} is empty", read_split),
    "image without mask": (
        lambda root: (root / "masks/train/img1.png").unlink(),
        FileNotFoundError,
        r"image {root}/images/train/img1\.png has no mask",
        read_split,
    ),
    "mask without image": (
        lambda root: shutil.copy(root / "masks/train/img1.png", root / "masks/train/stray.png"),
        FileNotFoundError,
        r"mask {root}/masks/train/stray\.png has no image",
        read_split,
    ),
    "size mismatch": (
        lambda root: write_mask(root / "masks/train/img1.png", np.zeros((4, 5), np.uint8)),
        ValueError,
        rf"mask {{root}}/masks/train/img1\.png is 5x4 but image \S+img1\.png is {W}x{H}",
        read_split,
    ),
    "truncated png": (
        lambda root: cut_in_half(root / "images/train/img1.png"),
        OSError,
        r"image {root}/images/train/img1\.png is corrupt or truncated \(\d+ bytes\)",
        read_split,
    ),
    "truncated jpeg": (
        jpeg_image,
        OSError,
        r"image {root}/images/train/img1\.jpg is corrupt or truncated \(\d+ bytes\)",
        read_split,
    ),
    "not an image": (
        lambda root: (root / "images/train/img1.png").write_bytes(b"<html>not found</html>"),
        OSError,
        r"image {root}/images/train/img1\.png is corrupt or truncated \(22 bytes\)",
        read_split,
    ),
    "truncated mask": (
        lambda root: cut_in_half(root / "masks/train/img1.png"),
        OSError,
        r"mask {root}/masks/train/img1\.png is corrupt or truncated",
        read_split,
    ),
    "mask value out of range": (
        lambda root: write_mask(root / "masks/train/img1.png", raw_mask([0, 1, 7])),
        ValueError,
        r"mask {root}/masks/train/img1\.png has value 7 at \(y=0, x=2\) \(\d+ such pixels\) "
        r"but the dataset has num_classes=3 \(ids 0-2, ignore 255\): wrong num_classes",
        read_split,
    ),
    "rgb mask without palette": (
        lambda root: Image.fromarray(FOLDER_PALETTE[raw_mask([0, 1, 2])]).save(
            root / "masks/train/img1.png"
        ),
        ValueError,
        r"mask {root}/masks/train/img1\.png is an RGB image but the dataset has no palette",
        read_split,  # data.palette null: the VOC display colours must not decode masks
    ),
    # PyTorch re-raises a worker's exception in the main process with the original message
    "out of range in a worker": (
        lambda root: write_mask(root / "masks/train/img1.png", raw_mask([0, 1, 7])),
        ValueError,
        r"mask {root}/masks/train/img1\.png has value 7 at",
        lambda root: read_split(root, num_workers=1),
    ),
    "truncated image in a worker": (
        lambda root: cut_in_half(root / "images/train/img1.png"),
        OSError,
        r"image {root}/images/train/img1\.png is corrupt or truncated",
        lambda root: read_split(root, num_workers=1),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_names_file_and_value(case: str, tmp_path: Path) -> None:
    defect, error, pattern, read = CASES[case]
    root = clean_folder(tmp_path / "ds")
    read(root)  # clean: reads
    defect(root)
    with pytest.raises(error, match=pattern.format(root=re.escape(str(root)))):
        read(root)


def test_range_is_checked_after_the_label_map(tmp_path: Path) -> None:
    # reduce_zero_label: raw 3 -> id 2 is valid with 3 classes, raw 4 -> id 3 is not
    root = clean_folder(tmp_path / "ds")
    write_mask(root / "masks/train/img1.png", raw_mask([0, 1, 2, 3]))
    dm = FolderDataModule(root, classes=CLASSES, reduce_zero_label=True)
    assert set(dm.dataset("train", train=False)[1]["mask"].unique().tolist()) == {0, 1, 2, 255}
    write_mask(root / "masks/train/img1.png", raw_mask([0, 4]))
    with pytest.raises(ValueError, match=r"img1\.png has value 3 after the label map"):
        FolderDataModule(root, classes=CLASSES, reduce_zero_label=True).dataset("train", False)[1]
