"""The folder dataset on mmseg's custom layout: img_dir, ann_dir, suffixes, split files."""

from pathlib import Path

import numpy as np
import pytest
from owndata import class_mask, image_for, write_image, write_mask

from segformer.data.folder import FolderDataModule


@pytest.fixture
def mmseg_root(tmp_path: Path) -> Path:
    """Cityscapes-like custom data: img_dir/{split}/<city>/<name>_leftImg8bit.png and
    ann_dir/{split}/<city>/<name>_gtFine_labelTrainIds.png (+ a colour mask never read), and
    splits/{split}.txt listing names without suffix."""
    names = {"train": ["a/a_0", "a/a_1", "b/b_0"], "val": ["c/c_0"]}
    for split, stems in names.items():
        for i, stem in enumerate(stems):
            mask = class_mask(i)
            write_image(
                tmp_path / "img_dir" / split / f"{stem}_leftImg8bit.png", image_for(mask, "rgb", i)
            )
            ann = tmp_path / "ann_dir" / split
            write_mask(ann / f"{stem}_gtFine_labelTrainIds.png", mask)
            write_mask(ann / f"{stem}_gtFine_color.png", mask * 7)  # other suffix: ignored
        (tmp_path / "splits").mkdir(exist_ok=True)
        (tmp_path / "splits" / f"{split}.txt").write_text("\n".join(stems[:2]) + "\n")
    return tmp_path


MMSEG = {
    "img_dir": "img_dir/{split}",
    "ann_dir": "ann_dir/{split}",
    "img_suffix": "_leftImg8bit.png",
    "seg_map_suffix": "_gtFine_labelTrainIds.png",
}


def dm(root: Path, **kwargs) -> FolderDataModule:
    return FolderDataModule(root, classes=["bg", "fg"], num_workers=0, crop_size=32, **kwargs)


def test_mmseg_layout_pairs_by_name_recursively(mmseg_root: Path) -> None:
    samples = dm(mmseg_root, **MMSEG).samples("train")
    assert [(i.relative_to(mmseg_root).as_posix(), m.name) for i, m in samples] == [
        ("img_dir/train/a/a_0_leftImg8bit.png", "a_0_gtFine_labelTrainIds.png"),
        ("img_dir/train/a/a_1_leftImg8bit.png", "a_1_gtFine_labelTrainIds.png"),
        ("img_dir/train/b/b_0_leftImg8bit.png", "b_0_gtFine_labelTrainIds.png"),
    ]
    _, mask = dm(mmseg_root, **MMSEG).make_dataset("train", False).read(0)
    np.testing.assert_array_equal(mask, class_mask(0))


def test_mmseg_split_files_and_per_split_dirs(mmseg_root: Path) -> None:
    per_split = {
        **MMSEG,
        "img_dir": {"training": "img_dir/train", "validation": "img_dir/val"},
        "ann_dir": {"training": "ann_dir/train", "validation": "ann_dir/val"},
        "split_file": {"training": "splits/train.txt", "validation": "splits/val.txt"},
    }
    datamodule = dm(mmseg_root, train_split="training", val_split="validation", **per_split)
    assert [i.name for i, _ in datamodule.samples("training")] == [
        "a_0_leftImg8bit.png",
        "a_1_leftImg8bit.png",
    ]  # only the listed names
    assert len(datamodule.samples("validation")) == 1
    with pytest.raises(FileNotFoundError, match=r"data\.img_dir names no path for split 'test'"):
        datamodule.samples("test")


def test_mmseg_layout_errors_name_the_key(mmseg_root: Path) -> None:
    with pytest.raises(ValueError, match=r"both data\.img_dir and data\.ann_dir"):
        dm(mmseg_root, img_dir="img_dir/{split}")
    with pytest.raises(ValueError, match=r"set data\.img_dir and data\.ann_dir too"):
        dm(mmseg_root, img_suffix=".png")
    missing = {**MMSEG, "split_file": "splits/{split}.txt"}
    (mmseg_root / "splits" / "train.txt").write_text("a/a_0\nz/missing\n")
    with pytest.raises(FileNotFoundError, match="'z/missing' of the split list not found"):
        dm(mmseg_root, **missing).samples("train")
