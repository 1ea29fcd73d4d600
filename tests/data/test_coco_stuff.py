"""COCO-Stuff 164k from fixtures in its two real layouts: mmseg's *_labelTrainIds.png (written
next to the raw maps, as its converter does) and the raw stuffthingmaps ids."""

from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import raw_mask, write_image, write_mask
from helpers import compose_config
from hydra.utils import instantiate

from segformer.data.coco_stuff import RAW_TO_TRAIN_ID, UNUSED_IDS, COCOStuffDataModule

SMALL = {"batch_size": 2, "num_workers": 0, "crop_size": (16, 20), "scale": (32, 24)}
# raw ids: person, bicycle, an unused id (11), stop sign (12 -> 11), id 90 (unused), banner
# (91 -> 80), blanket (92 -> 81), wood (181 -> 170), unlabelled
RAW_VALUES = [0, 1, 11, 12, 90, 91, 92, 181, 255]
EXPECTED = {0: 0, 1: 1, 11: 255, 12: 11, 90: 255, 91: 80, 92: 81, 181: 170, 255: 255}


def write_coco_stuff(root: Path, train_ids: bool) -> Path:
    for split, n in (("train2017", 4), ("val2017", 2)):
        for i in range(n):
            stem = f"{i + 9:012d}"  # COCO file names: 000000000009.jpg
            write_image(root / "images" / split / f"{stem}.jpg", seed=i)
            raw = raw_mask(RAW_VALUES, seed=i)
            write_mask(root / "annotations" / split / f"{stem}.png", raw)  # mode L, as released
            if train_ids:
                mapped = np.vectorize(EXPECTED.get)(raw)
                write_mask(root / "annotations" / split / f"{stem}_labelTrainIds.png", mapped)
    return root


def test_the_171_classes_and_the_id_table():
    assert len(COCOStuffDataModule.CLASSES) == 171 == len(RAW_TO_TRAIN_ID)
    assert len(UNUSED_IDS) == 11 and 182 - len(UNUSED_IDS) == 171
    assert sorted(RAW_TO_TRAIN_ID.values()) == list(range(171))
    # spot checks against mmseg's converter table
    for raw, train in {12: 11, 26: 24, 30: 26, 45: 40, 66: 60, 69: 61, 83: 73, 91: 80}.items():
        assert RAW_TO_TRAIN_ID[raw] == train
    names = COCOStuffDataModule.CLASSES
    assert (names[0], names[11], names[79], names[80], names[170]) == (
        "person", "stop sign", "toothbrush", "banner", "wood"
    )  # fmt: skip


@pytest.mark.parametrize("train_ids", [False, True], ids=["stuffthingmaps", "labelTrainIds"])
def test_both_layouts_give_the_train_ids(tmp_path: Path, train_ids: bool):
    dm = COCOStuffDataModule(write_coco_stuff(tmp_path, train_ids), **SMALL)
    assert dm.num_classes == 171 and dm.palette.shape == (171, 3)
    assert (dm.train_split, dm.val_split, dm.test_split) == ("train2017", "val2017", "val2017")
    val = dm.dataset("val2017", train=False)
    assert len(val) == 2  # raw maps and labelTrainIds of one image are one sample
    sample = val[1]
    assert sample["name"] == "000000000010"
    expected = np.vectorize(EXPECTED.get)(raw_mask(RAW_VALUES, seed=1))
    np.testing.assert_array_equal(sample["mask"].numpy(), expected)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 16, 20) and batch["mask"].dtype == torch.int64
    assert set(batch["mask"].unique().tolist()) <= {*range(171), 255}


def test_a_missing_train_id_map_is_named(tmp_path: Path):
    root = write_coco_stuff(tmp_path, train_ids=True)
    (root / "annotations" / "val2017" / "000000000010_labelTrainIds.png").unlink()
    dm = COCOStuffDataModule(root, **SMALL)
    with pytest.raises(FileNotFoundError, match=r"000000000010.jpg has no mask"):
        dm.dataset("val2017", train=False)


def test_config(tmp_path: Path):
    write_coco_stuff(tmp_path / "coco_stuff164k", train_ids=False)
    cfg = compose_config("train", ["data=coco_stuff", f"paths.data_dir={tmp_path}"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, COCOStuffDataModule) and dm.root == tmp_path / "coco_stuff164k"
    assert dm.eval_settings == {"mode": "whole", "scale": [2048, 512], "align": 32}
    assert len(dm.dataset("val2017", train=False)) == 2
