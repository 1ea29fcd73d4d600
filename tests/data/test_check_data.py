"""segformer-check-data: every bad file reported, histogram, sizes and weights of a split."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datafiles import write_mask
from helpers import compose_config
from PIL import Image

from segformer.check_data import check_data
from segformer.data.check import check_split, median_frequency_weights
from segformer.data.folder import FolderDataModule

CLASSES = ["bg", "a", "b"]
# train ids of a three-image split: two 4x2 masks, one 3x5 mask with nothing but ignore
MASKS = {
    "m1": np.array([[0, 0, 0, 1], [0, 0, 1, 1]]),  # bg 5, a 3
    "m2": np.array([[0, 0, 2, 2], [255, 2, 2, 2]]),  # bg 2, b 5, ignored 1
    "m3": np.full((5, 3), 255),
}
# freq = pixels / pixels of the masks holding the class: bg 7/16, a 3/8, b 5/8; median 7/16
WEIGHTS = [1.0, (7 / 16) / (3 / 8), (7 / 16) / (5 / 8)]


@pytest.fixture
def clean_root(tmp_path: Path) -> Path:
    """Folder dataset with reduce_zero_label masks (raw 0 = ignore, raw v = id v - 1)."""
    root = tmp_path / "ds"
    for name, ids in MASKS.items():
        image = root / "images" / "train" / f"{name}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((*ids.shape, 3), np.uint8)).save(image)
        write_mask(root / "masks" / "train" / f"{name}.png", np.where(ids == 255, 0, ids + 1))
    return root


def datamodule(root: Path) -> FolderDataModule:
    return FolderDataModule(root, classes=CLASSES, reduce_zero_label=True)


def test_clean_split_summary(clean_root: Path) -> None:
    report = check_split(datamodule(clean_root), "train", num_workers=2)
    assert report.problems == [] and report.samples == 3
    counts = np.bincount(np.concatenate([m.ravel() for m in MASKS.values()]), minlength=256)
    np.testing.assert_array_equal(report.pixels, counts[:3])  # label map applied
    assert report.ignored == counts[255] == 16
    assert dict(report.sizes) == {(4, 2): 2, (3, 5): 1}
    weights = median_frequency_weights(report.pixels, report.image_pixels)
    np.testing.assert_allclose(weights, WEIGHTS)


def test_absent_class_gets_zero_weight() -> None:
    weights = median_frequency_weights(np.array([10, 0, 30]), np.array([40, 0, 40]))
    np.testing.assert_allclose(weights, [2.0, 0.0, 2 / 3])  # freq 1/4, 3/4; median 1/2


def test_every_bad_file_is_reported(clean_root: Path) -> None:
    train = clean_root / "images" / "train"
    data = (train / "m1.png").read_bytes()
    (train / "m1.png").write_bytes(data[: len(data) // 2])  # truncated image
    masks = clean_root / "masks" / "train"
    write_mask(masks / "m2.png", np.full((2, 4), 9))  # raw 9 -> id 8, beyond 3 classes
    write_mask(masks / "m3.png", np.zeros((2, 2)))  # 2x2 mask for a 3x5 image
    report = check_split(datamodule(clean_root), "train", num_workers=2)
    assert report.bad_files == {train / "m1.png", masks / "m2.png", masks / "m3.png"}
    problems = " ".join(problem for _, problem in report.problems)
    assert "truncated" in problems and "value 8 after the label map" in problems
    assert "is 2x2 but image" in problems


def test_unlisted_split_is_one_problem(clean_root: Path) -> None:
    report = check_split(datamodule(clean_root), "val")
    assert report.samples == 0 and len(report.problems) == 1
    assert "'val'" in report.problems[0][1]


def test_check_data_config_on_a_clean_split(clean_root: Path, tmp_path: Path) -> None:
    overrides = [
        "data=folder",
        f"data.root={clean_root}",
        "data.classes=[bg,a,b]",
        "data.reduce_zero_label=true",
        "splits=[train]",
        "run_name=clean",  # compose_config resolves the run dir before HydraConfig is set
    ]
    cfg = compose_config("check_data", overrides, tmp_path)
    assert check_data(cfg) == 0
    report = (Path(cfg.paths.output_dir) / "report.txt").read_text()
    weights = ",".join(f"{w:.4f}" for w in WEIGHTS)
    assert f"model.class_weights=[{weights}]" in report


def test_command_exits_1_and_names_the_bad_file(clean_root: Path, tmp_path: Path) -> None:
    (clean_root / "images" / "train" / "m2.png").write_bytes(b"not a png")
    command = [
        sys.executable,
        "-m",
        "segformer.check_data",
        "data=folder",
        f"data.root={clean_root}",
        "data.classes=[bg,a,b]",
        "data.reduce_zero_label=true",
    ]
    env = {**os.environ, "COLUMNS": "200"}
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr[-2000:]
    assert "images/train/m2.png" in run.stdout and "1 bad file(s)" in run.stdout


def test_check_data_lists_groups_and_the_ones_splits_share(tmp_path: Path) -> None:
    root = tmp_path / "drives"
    for split, names in {"train": ["d1_0", "d1_1", "d2_0"], "val": ["d2_5", "d3_0"]}.items():
        for name in names:
            image = root / "images" / split / f"{name}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(image)
            write_mask(root / "masks" / split / f"{name}.png", np.eye(4, dtype=np.uint8))
    overrides = [
        "data=folder",
        f"data.root={root}",
        "data.classes=[bg,a]",
        "data.group='(d\\d)_'",
        "splits=[train,val]",
        "run_name=groups",
    ]
    cfg = compose_config("check_data", overrides, tmp_path)
    assert check_data(cfg) == 0
    report = (Path(cfg.paths.output_dir) / "report.txt").read_text()
    assert "groups of train (samples): d1 (2), d2 (1)" in report
    assert "groups of val (samples): d2 (1), d3 (1)" in report
    assert "groups in more than one split: d2:" in report
