"""Non-finite input values (NaN / inf no-data pixels of float TIFFs): an error naming the file
and the count, or with data.nodata masked (ignore_index in the label, 0 in the normalised
image); segformer-check-data reports them; a NaN loss says when the inputs were non-finite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import TINY
from owndata import folder_overrides
from PIL import Image
from rich.console import Console

from segformer.data.channels import ImageFormat
from segformer.data.check import check_split, print_report
from segformer.data.folder import FolderDataModule
from segformer.errors import InputError, NonFiniteLossError
from segformer.module import SegFormerModule

SIZE = 32
STATS = {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def float_image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (SIZE, SIZE, 3)).astype(np.float32)


def write_folder(root: Path, images: dict[str, np.ndarray], split: str = "train") -> Path:
    """root/images/<split>/<name>.tif (float32, bands last, as GDAL writes them) + masks."""
    for name, image in images.items():
        path = root / "images" / split / f"{name}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(path, image, photometric="minisblack", planarconfig="contig")
        mask = root / "masks" / split / f"{name}.png"
        mask.parent.mkdir(parents=True, exist_ok=True)
        ids = np.zeros((SIZE, SIZE), np.uint8)
        ids[:, SIZE // 2 :] = 1
        Image.fromarray(ids).save(mask)
    return root


def with_nan(seed: int, cells: list[tuple[int, int, int]], value: float = np.nan) -> np.ndarray:
    image = float_image(seed)
    for y, x, band in cells:
        image[y, x, band] = value
    return image


def datamodule(root: Path, **keys) -> FolderDataModule:
    return FolderDataModule(
        root, classes=["bg", "fg"], num_workers=0, **{**STATS, **keys}, label_check_files=0
    )


def test_a_nan_pixel_is_an_error_naming_the_file_and_the_count(tmp_path: Path) -> None:
    image = with_nan(0, [(3, 4, 1), (3, 5, 0)])
    image[9, 9, 2] = np.inf
    root = write_folder(tmp_path, {"a": float_image(1), "b": image})
    dataset = datamodule(root).make_dataset("train", train=False)
    dataset[0]  # a clean float TIFF reads
    with pytest.raises(InputError) as err:
        dataset[1]
    message = str(err.value)
    assert str(root / "images" / "train" / "b.tif") in message
    assert "3 non-finite value(s) (2 NaN, 1 inf; the first at y=3, x=4, band 1)" in message
    assert "data.nodata=nan" in message


@pytest.mark.parametrize("nodata", ["nan", -9999.0])
def test_nodata_pixels_are_ignored_in_the_label_and_zero_in_the_image(
    tmp_path: Path, nodata: object
) -> None:
    image = with_nan(0, [(3, 4, 1)])
    image[10, 20, :] = -9999.0  # a no-data value in every band
    image[12, 2, :] = np.inf
    root = write_folder(tmp_path, {"a": image})
    dataset = datamodule(root, nodata=nodata).make_dataset("train", train=False)
    sample = dataset[0]
    masked = {(3, 4), (12, 2)} | ({(10, 20)} if nodata != "nan" else set())
    for y, x in masked:
        assert sample["mask"][y, x] == 255, (y, x)
        assert torch.equal(sample["image"][:, y, x], torch.zeros(3)), (y, x)
    assert int((sample["mask"] == 255).sum()) == len(masked)
    if nodata == "nan":  # -9999 is then a value like any other (and finite)
        assert sample["mask"][10, 20] == 1 and sample["image"][0, 10, 20] < -1000
    assert torch.isfinite(sample["image"]).all()
    # the training pipeline too: augmentations run on finite values, the label ignores them
    train = datamodule(
        root, nodata=nodata, crop_size=SIZE, scale=[SIZE, SIZE], ratio_range=[1.0, 1.0]
    )
    train_sample = train.make_dataset("train", train=True)[0]
    assert torch.isfinite(train_sample["image"]).all()
    assert int((train_sample["mask"] == 255).sum()) == len(masked)  # flipped, maybe


def test_nodata_value_for_integer_images_and_bad_values(tmp_path: Path) -> None:
    fmt = ImageFormat(in_channels=1, max_value=65535, nodata=0)
    path = tmp_path / "dem.tif"
    stored = np.full((4, 4), 1000, np.uint16)
    stored[0, 0] = 0
    tifffile.imwrite(path, stored)
    image, nodata = fmt.read_with_nodata(path)
    assert nodata is not None and nodata.sum() == 1 and nodata[0, 0]
    assert image[0, 0, 0] == round(fmt.mean_std()[0][0])  # the mean: 0 once normalised
    # a value no uint16 pixel can hold masks nothing
    assert (
        ImageFormat(in_channels=1, max_value=65535, nodata=-9999).read_with_nodata(path)[1] is None
    )
    assert ImageFormat(nodata="NaN") == ImageFormat(nodata=float("nan"))  # comparable
    assert ImageFormat.from_dict(ImageFormat(nodata="nan").to_dict()).nodata == "nan"
    with pytest.raises(InputError, match=r"data\.nodata='none of these'"):
        ImageFormat(nodata="none of these")
    with pytest.raises(InputError, match="inf is no-data already"):
        ImageFormat(nodata="inf")


def test_check_data_reports_non_finite_files_and_nodata_pixels(tmp_path: Path) -> None:
    image = with_nan(0, [(3, 4, 1), (5, 5, 0)])
    root = write_folder(tmp_path, {"a": float_image(1), "b": image})
    report = check_split(datamodule(root), "train", num_workers=1)
    assert [(f.name, "2 non-finite value(s)" in m) for f, m in report.problems] == [("b.tif", True)]
    report = check_split(datamodule(root, nodata="nan"), "train", num_workers=1)
    assert report.problems == [] and report.nodata_pixels == 2
    assert report.ignored == 2  # counted as ignored pixels
    mean, _ = report.band_stats()
    assert np.isfinite(mean).all() and report.band_pixels == 2 * SIZE * SIZE - 2
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "2 no-data pixel(s)" in text and "images/train/b.tif (2)" in text


def test_nonfinite_loss_names_nonfinite_inputs() -> None:
    module = SegFormerModule(num_classes=2)
    batch = {
        "image": torch.zeros(2, 3, 8, 8),
        "mask": torch.zeros(2, 8, 8, dtype=torch.long),
        "name": ["clean", "broken"],
    }
    batch["image"][1, 0, :2, :2] = float("nan")
    with pytest.raises(NonFiniteLossError) as err:
        module._nonfinite(torch.tensor(float("nan")), batch)
    message = str(err.value)
    assert "(batch: clean, broken)" in message
    assert "non-finite values (NaN/inf) in broken (4 values)" in message
    assert "data.nodata=nan" in message and "Lower optimizer.lr" not in message
    batch["image"][1] = 0.0  # finite inputs: the optimisation advice
    with pytest.raises(NonFiniteLossError, match=r"Lower optimizer\.lr") as err:
        module._nonfinite(torch.tensor(float("nan")), batch)
    assert "non-finite values" not in str(err.value)


def _train(root: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    run = [o for o in TINY if not o.startswith("data.")]
    data = [
        *folder_overrides(root),
        "data.label_check_files=0",
        "data.mean=[0.5,0.5,0.5]",
        "data.std=[0.25,0.25,0.25]",
        "callbacks.prediction_grid=null",
    ]
    cmd = [sys.executable, "-m", "segformer.train", f"paths.root_dir={root}", *run, *data]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_training_on_a_nan_tiff_stops_naming_it_or_trains_with_it_masked(tmp_path: Path) -> None:
    images = {f"s{i}": float_image(i) for i in range(4)}
    images["s2"] = with_nan(2, [(0, 0, 0), (1, 1, 1)])
    root = write_folder(tmp_path / "ds", images)
    write_folder(root, {f"v{i}": float_image(10 + i) for i in range(2)}, split="val")
    proc = _train(root)
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("segformer-train: error: image ") and "s2.tif has 2 non-finite" in line
    assert "Traceback" not in proc.stderr

    proc = _train(root, "data.nodata=nan")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "val/mIoU" in proc.stdout + proc.stderr
