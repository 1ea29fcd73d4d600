import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from datafiles import FOLDER_PALETTE, H, W, raw_mask, write_image, write_mask
from PIL import Image

from segformer.data.base import (
    SegmentationDataset,
    default_palette,
    make_label_map,
    read_mask,
    reduce_zero_label_map,
    rgb_to_index,
)
from segformer.data.folder import FolderDataModule


def folder_dm(root: Path, **kwargs) -> FolderDataModule:
    defaults = {"batch_size": 2, "num_workers": 0, "crop_size": 16, "scale": (32, 24)}
    return FolderDataModule(root, classes=["bg", "a", "b"], **{**defaults, **kwargs})


def test_sample_dict(folder_root: Path):
    sample = folder_dm(folder_root).dataset("val", train=False)[0]
    assert set(sample) == {"image", "mask", "name"}
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (H, W)
    assert sample["name"] == "img0"


def test_label_maps():
    lut = make_label_map({11: 255})
    assert lut.dtype == np.uint8 and lut[11] == 255 and lut[3] == 3
    assert (make_label_map({7: 0}, default=255)[[7, 8]] == [0, 255]).all()
    assert reduce_zero_label_map()[[0, 1, 150, 255]].tolist() == [255, 0, 149, 255]


def test_default_palette_is_the_voc_colour_map():
    assert default_palette(4).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]


def test_rgb_masks_decode_with_the_palette(tmp_path: Path):
    ids = raw_mask([0, 1, 2])
    rgb = FOLDER_PALETTE[ids]
    rgb[0, 0] = (1, 2, 3)  # a colour outside the palette
    assert rgb_to_index(rgb, FOLDER_PALETTE, 255)[0, 0] == 255
    np.testing.assert_array_equal(rgb_to_index(rgb, FOLDER_PALETTE, 255)[1:], ids[1:])
    path = tmp_path / "m.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(read_mask(path, FOLDER_PALETTE)[1:], ids[1:])


def test_sixteen_bit_masks_beyond_uint8_are_rejected(tmp_path: Path):
    path = tmp_path / "m.png"
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"m\.png"):
        read_mask(path, FOLDER_PALETTE)


def test_mask_size_mismatch_names_both_files(tmp_path: Path):
    write_image(tmp_path / "a.png")
    write_mask(tmp_path / "a_mask.png", np.zeros((H + 1, W), np.uint8))
    with pytest.raises(ValueError, match=r"a_mask\.png"):
        SegmentationDataset([(tmp_path / "a.png", tmp_path / "a_mask.png")])[0]


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


def test_image_without_mask_names_the_image(folder_root: Path):
    (folder_root / "masks" / "train" / "img1.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img1\.jpg has no mask"):
        folder_dm(folder_root).setup("fit")


def test_mask_without_image_names_the_mask(folder_root: Path):
    shutil.copy(folder_root / "masks/train/img0.png", folder_root / "masks/train/stray.png")
    with pytest.raises(FileNotFoundError, match=r"stray\.png has no image"):
        folder_dm(folder_root).setup("fit")


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
