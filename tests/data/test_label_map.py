"""data.label_map and the label checks on real mask files: 0/255 masks, palette (mode P) masks,
unmapped values, one-class splits, and what segformer-check-data reports about them."""

from pathlib import Path

import numpy as np
import pytest
from helpers import compose_config
from owndata import make_folder, write_mask
from rich.console import Console

from segformer.check_data import check_data
from segformer.data.check import check_split, print_report
from segformer.data.folder import FolderDataModule


def dm(root: Path, **kwargs) -> FolderDataModule:
    defaults = {"classes": ["bg", "fg"], "batch_size": 2, "num_workers": 0, "crop_size": 32}
    return FolderDataModule(root, **{**defaults, **kwargs})


def _train_ids(datamodule: FolderDataModule) -> set[int]:
    datamodule.setup("fit")
    dataset = datamodule.dataset("train", True)
    return set().union(*(np.unique(dataset.read(i)[1]).tolist() for i in range(len(dataset))))


def test_zero_255_masks_without_a_map_stop_training_with_the_fix(tmp_path: Path) -> None:
    root = make_folder(tmp_path, stored=lambda m: m * 255)
    with pytest.raises(ValueError, match=r"only the values 0 and 255 \(e\.g\. .*s0\.png") as err:
        dm(root).setup("fit")
    assert "data.label_map={0:0,255:1}" in str(err.value)


def test_zero_255_masks_with_a_map_train_on_both_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path, stored=lambda m: m * 255)
    assert _train_ids(dm(root, label_map={0: 0, 255: 1})) == {0, 1}
    # 255 really meaning "ignore", said explicitly: accepted, and ignored
    assert _train_ids(dm(root, label_map={0: 0, 1: 1, 255: 255}, label_check_files=0)) == {0, 255}


def test_palette_masks_with_a_label_map(tmp_path: Path) -> None:
    # mode P masks storing 10 / 20 (palette indices), as tools export class colours
    root = make_folder(tmp_path, stored=lambda m: 10 + 10 * m, palette=True)
    assert _train_ids(dm(root, label_map={10: 0, 20: 1})) == {0, 1}


def test_values_the_map_does_not_name_are_errors(tmp_path: Path) -> None:
    root = make_folder(tmp_path, stored=lambda m: m * 255)
    write_mask(root / "masks" / "train" / "s1.png", np.full((32, 32), 128, np.uint8))
    datamodule = dm(root, label_map={0: 0, 255: 1}, label_check_files=0)
    datamodule.setup("fit")
    with pytest.raises(ValueError, match=r"s1\.png holds value\(s\) \[128\] .* does not map"):
        datamodule.dataset("train", True).read(1)


def test_map_to_a_missing_class_is_refused(tmp_path: Path) -> None:
    root = make_folder(tmp_path)
    with pytest.raises(ValueError, match=r"maps \{255: 2\} to class ids outside 0-1"):
        dm(root, label_map={0: 0, 255: 2}).setup("fit")
    with pytest.raises(ValueError, match="not both"):
        dm(root, label_map={0: 0}, reduce_zero_label=True)


def test_one_class_train_split_is_an_error_a_sampled_one_a_warning(tmp_path: Path) -> None:
    # 0/1 masks with reduce_zero_label: 0 -> ignore, 1 -> 0; only class 0 remains
    root = make_folder(tmp_path)
    with pytest.raises(ValueError, match=r"split 'train': every labelled pixel .* class 0 \(bg\)"):
        dm(root, reduce_zero_label=True).setup("fit")
    with pytest.warns(UserWarning, match=r"2 of 4 masks read; segformer-check-data reads all"):
        dm(root, reduce_zero_label=True, label_check_files=2).setup("fit")


def test_check_data_reports_labels_bands_and_ignored_files(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", kind="tiff4", stored=lambda m: m * 255)
    # one mask almost all ignored: listed with its share
    mask = np.full((32, 32), 255, np.uint8)
    mask[:4] = 0
    write_mask(root / "masks" / "train" / "s2.png", mask)
    datamodule = dm(root, classes=["bg", "fg", "other"], in_channels=4, max_value=65535)
    report = check_split(datamodule, "train", num_workers=1)
    console = Console(record=True, width=200)
    print_report(report, console)
    text = console.export_text()
    assert "class(es) with no pixels in train: fg, other" in text
    assert "s2.png" in text and "87.5" in text  # 28 of 32 rows ignored
    mean, std = report.band_stats()
    images = [datamodule.image_format.read(p) for p, _ in datamodule.samples("train")]
    pixels = np.concatenate([im.reshape(-1, 4) for im in images]).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(0))
    np.testing.assert_allclose(std, pixels.std(0))
    pasted = ",".join(f"{m:.3f}" for m in mean)
    assert f"data.mean=[{pasted}]" in text


def test_check_data_command_warns_about_zero_255_masks(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "ds", stored=lambda m: m * 255)
    overrides = ["data=folder", f"data.root={root}", "data.classes=[bg,fg]", "run_name=x"]
    cfg = compose_config("check_data", overrides, tmp_path)
    assert check_data(cfg) == 0  # a warning, not a bad file
    report = (Path(cfg.paths.output_dir) / "report.txt").read_text()
    assert "only the values 0 and 255" in report and "data.label_map={0:0,255:1}" in report
