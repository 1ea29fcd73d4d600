"""Each on-disk dataset read from a fixture in its real layout: classes, label mapping, a batch."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import CITYSCAPES_IDS, FOLDER_PALETTE, H, W, raw_mask, write_mask
from PIL import Image

from segformer.data.ade20k import ADE20KDataModule
from segformer.data.camvid import CamVidDataModule
from segformer.data.cityscapes import CityscapesDataModule
from segformer.data.datamodule import SegmentationDataModule
from segformer.data.folder import FolderDataModule
from segformer.data.voc import VOCDataModule

SMALL = {"batch_size": 2, "num_workers": 0, "crop_size": (16, 20), "scale": (32, 24)}


def eval_mask(dm: SegmentationDataModule, index: int = 0) -> np.ndarray:
    return dm.dataset(dm.val_split, train=False)[index]["mask"].numpy()


def check_train_batch(dm: SegmentationDataModule) -> None:
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 20) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 16, 20) and batch["mask"].dtype == torch.int64
    labels = set(batch["mask"].unique().tolist()) - {dm.ignore_index}
    assert labels <= set(range(dm.num_classes))
    assert len(batch["name"]) == 2


def check_metadata(dm: SegmentationDataModule, num_classes: int) -> None:
    assert dm.num_classes == len(dm.class_names) == num_classes
    assert dm.palette.shape == (num_classes, 3) and dm.palette.dtype == np.uint8


def test_camvid(camvid_root: Path):
    dm = CamVidDataModule(camvid_root, **SMALL)
    check_metadata(dm, 11)
    assert dm.class_names[0] == "Sky" and dm.class_names[-1] == "Bicyclist"
    expected = raw_mask([0, 3, 8, 11])
    expected[expected == 11] = 255  # void
    np.testing.assert_array_equal(eval_mask(dm), expected)
    check_train_batch(dm)


def test_ade20k_reduces_zero_label(ade_root: Path):
    dm = ADE20KDataModule(ade_root, **SMALL)
    check_metadata(dm, 150)
    assert (dm.train_split, dm.val_split) == ("training", "validation")
    raw = raw_mask([0, 1, 2, 150])
    np.testing.assert_array_equal(eval_mask(dm), np.where(raw == 0, 255, raw - 1))
    check_train_batch(dm)


def test_cityscapes_maps_label_ids_to_train_ids(cityscapes_root: Path):
    dm = CityscapesDataModule(cityscapes_root, **SMALL)
    check_metadata(dm, 19)
    train_id = {0: 255, 1: 255, 7: 0, 14: 255, 26: 13, 33: 18}
    expected = np.vectorize(train_id.get)(raw_mask(CITYSCAPES_IDS))
    np.testing.assert_array_equal(eval_mask(dm), expected)
    assert len(dm.dataset("val", train=False)) == 4  # *_gtFine_color.png is not a sample
    check_train_batch(dm)


def test_voc_palette_masks_keep_borders_ignored(voc_root: Path):
    dm = VOCDataModule(voc_root, **SMALL)
    check_metadata(dm, 21)
    assert dm.palette[15].tolist() == [192, 128, 128]  # person
    assert Image.open(voc_root / "SegmentationClass" / "2007_000032.png").mode == "P"
    np.testing.assert_array_equal(eval_mask(dm), raw_mask([0, 15, 255]))
    check_train_batch(dm)


def test_voc_train_aug_falls_back_to_sbd_masks(voc_root: Path):
    dm = VOCDataModule(voc_root, train_split="train_aug", **SMALL)
    masks = [mask.parent.name for _, mask in dm.samples("train_aug")]
    assert masks == ["SegmentationClass"] * 2 + ["SegmentationClassAug"] * 2


def test_voc_list_with_a_missing_image(voc_root: Path):
    (voc_root / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n2010_999999\n")
    with pytest.raises(FileNotFoundError, match="2010_999999"):
        VOCDataModule(voc_root, **SMALL).setup("validate")


FOLDER = {"classes": ["bg", "red", "green"], "palette": FOLDER_PALETTE.tolist(), **SMALL}


def test_folder_index_masks(folder_root: Path):
    dm = FolderDataModule(folder_root, **FOLDER)
    check_metadata(dm, 3)
    np.testing.assert_array_equal(eval_mask(dm), raw_mask([0, 1, 2, 255]))
    check_train_batch(dm)


def test_folder_rgb_masks_and_reduce_zero_label(folder_root: Path):
    for mask in (folder_root / "masks").rglob("*.png"):
        ids = np.asarray(Image.open(mask))
        Image.fromarray(np.where(ids[..., None] == 255, 7, FOLDER_PALETTE[ids % 3])).save(mask)
    dm = FolderDataModule(folder_root, reduce_zero_label=True, **FOLDER)
    raw = raw_mask([0, 1, 2, 255])
    np.testing.assert_array_equal(eval_mask(dm), np.where(raw % 255 == 0, 255, raw - 1))
    check_train_batch(dm)


def test_folder_split_lists(folder_root: Path):
    for sub in ("images", "masks"):  # flatten to images/*, masks/*
        for path in (folder_root / sub / "train").iterdir():
            path.rename(folder_root / sub / path.name)
    (folder_root / "splits").mkdir()
    (folder_root / "splits" / "train.txt").write_text("img3\nimg1\n")
    samples = FolderDataModule(folder_root, **FOLDER).samples("train")
    assert [image.name for image, _ in samples] == ["img3.jpg", "img1.jpg"]


def test_folder_palette_must_match_classes(folder_root: Path):
    with pytest.raises(ValueError, match="3 classes"):
        FolderDataModule(folder_root, classes=["a", "b", "c"], palette=[[0, 0, 0]])


def test_folder_duplicate_stems_are_rejected(folder_root: Path):
    write_mask(folder_root / "masks" / "train" / "img0.bmp", np.zeros((H, W), np.uint8))
    with pytest.raises(ValueError, match="img0"):
        FolderDataModule(folder_root, **FOLDER).setup("fit")
