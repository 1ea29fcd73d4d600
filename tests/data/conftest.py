"""Tiny on-disk fixtures in each dataset's real layout (file names, folders, PNG modes)."""

from pathlib import Path

import numpy as np
import pytest
from datafiles import CITYSCAPES_IDS, raw_mask, write_image, write_mask

from segformer.data.labels import default_palette


@pytest.fixture
def camvid_root(tmp_path: Path) -> Path:
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            write_image(tmp_path / split / f"0001TP_{i:06d}.png", seed=i)
            write_mask(tmp_path / f"{split}annot" / f"0001TP_{i:06d}.png", raw_mask([0, 3, 8, 11]))
    return tmp_path


@pytest.fixture
def ade_root(tmp_path: Path) -> Path:
    for split, n in (("training", 4), ("validation", 2)):
        for i in range(n):
            name = f"ADE_{split[:5]}_{i:08d}"
            write_image(tmp_path / "images" / split / f"{name}.jpg", seed=i)
            write_mask(tmp_path / "annotations" / split / f"{name}.png", raw_mask([0, 1, 2, 150]))
    return tmp_path


@pytest.fixture(params=["labelIds", "labelTrainIds"])
def cityscapes_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    train_ids = {0: 255, 1: 255, 7: 0, 14: 255, 26: 13, 33: 18}
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for i in range(4):
            stem = f"{city}_{i:06d}_000019"
            write_image(tmp_path / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", i)
            mask = raw_mask(CITYSCAPES_IDS)
            gt = tmp_path / "gtFine" / split / city
            write_mask(gt / f"{stem}_gtFine_color.png", mask)  # distractor: never read
            if request.param == "labelTrainIds":
                mask = np.vectorize(train_ids.get)(mask)
            write_mask(gt / f"{stem}_gtFine_{request.param}.png", mask)
    return tmp_path


@pytest.fixture
def voc_root(tmp_path: Path) -> Path:
    """VOC2012 with palette PNGs and 255 object borders; SBD masks for two extra images."""
    palette = default_palette(256)
    lists = {"train": ["2007_000032", "2007_000039"], "val": ["2007_000033"]}
    aug = ["2008_000001", "2008_000002"]
    for i, stem in enumerate([*lists["train"], *lists["val"], *aug]):
        write_image(tmp_path / "JPEGImages" / f"{stem}.jpg", seed=i)
        mask = raw_mask([0, 15, 255])  # background, person, border
        if stem in aug:
            write_mask(tmp_path / "SegmentationClassAug" / f"{stem}.png", mask)  # mode L
        else:
            write_mask(tmp_path / "SegmentationClass" / f"{stem}.png", mask, palette)
    write_image(tmp_path / "JPEGImages" / "2009_000000.jpg")  # an image in no split
    lists["train_aug"] = lists["train"] + aug
    for split, stems in lists.items():
        path = tmp_path / "ImageSets" / "Segmentation" / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(stems) + "\n")
    return tmp_path


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """images/{split}/*.jpg|png + masks/{split}/*.png, index masks with values 0, 1, 2, 255."""
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            write_image(tmp_path / "images" / split / f"img{i}.{'jpg' if i % 2 else 'png'}", i)
            write_mask(tmp_path / "masks" / split / f"img{i}.png", raw_mask([0, 1, 2, 255]))
    return tmp_path
