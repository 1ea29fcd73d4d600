"""model.class_weights=auto: class pixels counted from the training masks (label map, ignore
index, reduce_zero_label), weights by each rule, the cache beside the data (hit, invalidation,
read-only fallback), the list stored in the checkpoint, and equality with segformer-check-data."""

from __future__ import annotations

import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CAMVID_ROOT, TINY, compose_config
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

from segformer.build import build_module
from segformer.check_data import check_data
from segformer.data.class_weights import (
    CACHE_NAME,
    WeightRule,
    auto_class_weights,
    parse_rule,
    split_counts,
    weights_from_counts,
)
from segformer.data.dataset import SegmentationDataset
from segformer.data.folder import FolderDataModule
from segformer.errors import InputError
from segformer.train import train

CLASSES = ["bg", "a", "b"]
# stored value -> class id; 7 marks pixels to ignore
LABEL_MAP = {0: 0, 100: 1, 200: 2, 7: 255}
# three 4x4 masks as (stored value, pixels): per class bg, a, b and ignored
MASKS = [
    [(0, 8), (100, 4), (7, 4)],  # bg 8, a 4, ignored 4
    [(0, 4), (200, 10), (7, 2)],  # bg 4, b 10, ignored 2
    [(0, 4), (100, 6), (200, 6)],  # bg 4, a 6, b 6
]
PIXELS = [16, 10, 16]  # labelled pixels per class
IMAGE_PIXELS = [48, 32, 32]  # pixels of the masks holding the class (bg: all three)
# by hand: f = 16/48, 10/32, 16/32 = 1/3, 0.3125, 0.5; median 1/3
MEDIAN_FREQUENCY = [1.0, (1 / 3) / 0.3125, (1 / 3) / 0.5]
SQRT_MEDIAN_FREQUENCY = [1.0, math.sqrt(16 / 15), math.sqrt(2 / 3)]
ENET = [1 / math.log(1.02 + 16 / 42), 1 / math.log(1.02 + 10 / 42), 1 / math.log(1.02 + 16 / 42)]


def write_mask(path: Path, values: list[tuple[int, int]]) -> None:
    flat = np.concatenate([np.full(n, v, np.uint8) for v, n in values])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(flat.reshape(4, 4)).save(path)


def write_dataset(root: Path, masks: list[list[tuple[int, int]]] = MASKS) -> Path:
    for split, n in (("train", len(masks)), ("val", 1)):
        for i in range(n):
            image = np.random.default_rng(i).integers(0, 256, (4, 4, 3), dtype=np.uint8)
            (root / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / "images" / split / f"m{i}.png")
            write_mask(root / "masks" / split / f"m{i}.png", masks[i])
    return root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The mask files read (SegmentationDataset.read_raw_mask) from now on."""
    seen: list[Path] = []
    original = SegmentationDataset.read_raw_mask

    def counted(self: SegmentationDataset, path: Path) -> np.ndarray:
        seen.append(path)
        return original(self, path)

    monkeypatch.setattr(SegmentationDataset, "read_raw_mask", counted)
    return seen


def datamodule(root: Path, **kwargs) -> FolderDataModule:
    settings = {"classes": CLASSES, "label_map": LABEL_MAP, "num_workers": 0, **kwargs}
    return FolderDataModule(root, **settings)


def test_counts_honour_label_map_and_ignore_index(root: Path) -> None:
    counts = split_counts(datamodule(root), cache=False)
    assert counts.masks == 3 and counts.split == "train"
    np.testing.assert_array_equal(counts.pixels, PIXELS)
    np.testing.assert_array_equal(counts.image_pixels, IMAGE_PIXELS)
    assert counts.ignored == 6


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("auto", MEDIAN_FREQUENCY),
        ("median_frequency", MEDIAN_FREQUENCY),
        ("auto_sqrt", SQRT_MEDIAN_FREQUENCY),
        ("auto_enet", ENET),
        ({"rule": "enet"}, ENET),
        ({"rule": "enet", "c": 1.5}, [1 / math.log(1.5 + p / 42) for p in PIXELS]),
    ],
)
def test_each_rule_against_a_hand_computation(root: Path, rule, expected) -> None:
    weights, line = auto_class_weights(rule, datamodule(root))
    np.testing.assert_allclose(weights, expected, rtol=1e-12)
    assert line.startswith(f"class weights ({parse_rule(rule)}, from 3 masks of train, counted,")
    assert line.endswith(", ".join(f"{n}={w:.4f}" for n, w in zip(CLASSES, expected, strict=True)))


def test_absent_class_gets_zero_under_every_rule() -> None:
    for rule in ("median_frequency", "sqrt_median_frequency", "enet"):
        weights = weights_from_counts(np.array([10, 0, 30]), np.array([40, 0, 40]), rule)
        assert weights[1] == 0 and (weights[[0, 2]] > 0).all()


def test_reduce_zero_label(tmp_path: Path) -> None:
    """Stored 0 is ignored and v becomes v - 1: the same counts as the label map above."""
    shifted = [[({0: 1, 100: 2, 200: 3, 7: 0}[v], n) for v, n in mask] for mask in MASKS]
    root = write_dataset(tmp_path / "data", shifted)
    counts = split_counts(FolderDataModule(root, classes=CLASSES, reduce_zero_label=True))
    np.testing.assert_array_equal(counts.pixels, PIXELS)
    assert counts.ignored == 6


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("median", "unknown rule 'median'"),
        ({"rule": "enet", "gamma": 2}, "unknown option(s) ['gamma']"),
        ({"rule": "auto_sqrt", "c": 1.1}, "option of the enet rule"),
        ({"rule": "enet", "c": 0.5}, "number > 1"),
    ],
)
def test_user_mistakes_are_input_errors(root: Path, value, message: str) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        parse_rule(value)


def test_lists_and_null_are_not_rules() -> None:
    assert parse_rule(None) is None and parse_rule([1.0, 2.0]) is None
    assert parse_rule("auto") == WeightRule("median_frequency")


def test_cache_hit_reads_no_mask(root: Path, reads: list[Path]) -> None:
    first = split_counts(datamodule(root))
    assert len(reads) == 3 and first.counted and first.cache == root.resolve() / CACHE_NAME
    second = split_counts(datamodule(root))
    assert len(reads) == 3, "the second count read masks"
    assert not second.counted and second.cache == first.cache
    np.testing.assert_array_equal(second.pixels, first.pixels)
    np.testing.assert_array_equal(second.image_pixels, first.image_pixels)
    _, line = auto_class_weights("auto", datamodule(root))
    assert f"from 3 masks of train, cached {first.cache}):" in line


def test_changed_mask_or_label_settings_count_again(root: Path, reads: list[Path]) -> None:
    split_counts(datamodule(root))
    mask = root / "masks" / "train" / "m2.png"
    write_mask(mask, [(0, 16)])  # all background now
    stat = mask.stat()
    os.utime(mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a coarse clock
    counts = split_counts(datamodule(root))
    assert counts.counted and len(reads) == 6
    np.testing.assert_array_equal(counts.pixels, [28, 4, 10])
    # another label map is another key: 7 now counts as class a
    counts = split_counts(datamodule(root, label_map={**LABEL_MAP, 7: 1}))
    assert counts.counted and len(reads) == 9 and counts.pixels[1] == 10


def test_read_only_data_folder_falls_back_to_the_cache_dir(
    root: Path, tmp_path: Path, reads: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache_home = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    root.chmod(0o555)  # also honoured when the tests run as root
    try:
        first = split_counts(datamodule(root))
        second = split_counts(datamodule(root))
    finally:
        root.chmod(0o755)
    assert not (root / CACHE_NAME).exists()
    assert first.cache is not None and first.cache.is_relative_to(cache_home / "segformer")
    assert second.cache == first.cache and not second.counted and len(reads) == 3


def test_generated_data_has_no_masks_to_count() -> None:
    from segformer.data.synthetic import SyntheticDataModule

    with pytest.raises(InputError, match="generates its samples in memory"):
        auto_class_weights("auto", SyntheticDataModule(num_train=2, num_val=1, num_workers=0))


def _train_overrides(root: Path) -> list[str]:
    tiny = [o for o in TINY if not o.startswith("data.")]  # synthetic-only keys out
    return [
        *tiny,
        "data=folder",
        f"data.root={root}",
        f"data.classes=[{','.join(CLASSES)}]",
        "data.label_map={0: 0, 100: 1, 200: 2, 7: 255}",
        "data.batch_size=2",
        "data.val_batch_size=1",
        "data.num_workers=0",
        "data.crop_size=[64, 64]",
        "data.scale=[64, 64]",
        "data.label_check_files=0",
        "callbacks.prediction_grid=null",
        "model.class_weights=auto_sqrt",
        "run_name=auto_weights",
    ]


def test_training_stores_the_counted_list_and_check_data_prints_it(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_config("train", _train_overrides(root), tmp_path)
    with caplog.at_level(logging.INFO):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    lines = [m for m in lines if not m.startswith("Seed set to")]  # seed_everything's: the first
    assert lines[0].startswith("class weights (sqrt_median_frequency, from 3 masks of train")
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, weights_only=True)["hyper_parameters"]["class_weights"]
    np.testing.assert_allclose(stored, SQRT_MEDIAN_FREQUENCY, rtol=1e-12)

    # segformer-check-data on the same data prints the same weights, and the same line
    check = _check_data_config(root, tmp_path, "class_weights=auto_sqrt")
    assert check_data(check) == 0
    report = (Path(check.paths.output_dir) / "report.txt").read_text()
    pasted = re.search(r"model\.class_weights=\[([^\]]*)\]", report)
    assert pasted is not None
    assert [float(w) for w in pasted.group(1).split(",")] == [round(w, 4) for w in stored]
    named = lines[0].split("): ", 1)[1]
    assert f"class weights (sqrt_median_frequency, from 3 masks of train): {named}" in report

    # resuming: the checkpoint's list, not a recount of the (now changed) masks
    write_mask(root / "masks" / "train" / "m0.png", [(200, 16)])
    resume = compose_config("train", [*_train_overrides(root), "ckpt_path=last"], tmp_path)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        module = build_module(resume, instantiate(resume.data))
    assert module.hparams.class_weights == stored
    torch.testing.assert_close(module.class_weight, torch.tensor(stored).float())
    assert any("from the resumed checkpoint" in r.getMessage() for r in caplog.records)


def _check_data_config(root: Path, tmp_path: Path, *extra: str) -> DictConfig:
    """segformer-check-data on the fixture's folder (its label map: 7 is void)."""
    data = [
        "data=folder",
        f"data.root={root}",
        f"data.classes=[{','.join(CLASSES)}]",
        "data.label_map={0: 0, 100: 1, 200: 2, 7: 255}",
    ]
    return compose_config("check_data", [*data, *extra, "run_name=check"], tmp_path)


def test_check_data_keeps_counts_for_auto(root: Path, tmp_path: Path, reads: list[Path]) -> None:
    """A clean check-data scan stores its counts where `auto` looks: training reads no mask."""
    check = _check_data_config(root, tmp_path)
    assert check_data(check) == 0
    before = len(reads)
    weights, line = auto_class_weights("auto", datamodule(root))
    assert len(reads) == before and f"cached {root.resolve() / CACHE_NAME}" in line
    np.testing.assert_allclose(weights, MEDIAN_FREQUENCY, rtol=1e-12)


@pytest.mark.slow
@pytest.mark.skipif(
    not (CAMVID_ROOT / "trainannot").is_dir(), reason=f"real CamVid not found at {CAMVID_ROOT}"
)
@pytest.mark.parametrize("rule", ["auto", "auto_sqrt"])
def test_real_camvid_auto_equals_check_data(
    tmp_path: Path, rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standard train split: auto counts (the data folder is read-only: the counts go to the
    cache dir), then check-data scans on its own; the same weights, and the experiment's hand
    list is auto_sqrt's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = ["data=camvid", f"data.root={CAMVID_ROOT}", "data.cache_images=false"]
    split = ["data.train_split=train", "data.val_groups=null"]
    cfg = compose_config(
        "train", ["experiment=camvid", *data, *split, f"model.class_weights={rule}"], tmp_path
    )
    weights, line = auto_class_weights(cfg.model.class_weights, instantiate(cfg.data))
    assert f"from 367 masks of train, counted, cached {tmp_path / 'cache'}" in line
    check = compose_config("check_data", [*data, f"class_weights={rule}"], tmp_path)
    assert check_data(check) == 0
    report = (Path(check.paths.output_dir) / "report.txt").read_text()
    printed = re.search(r"model\.class_weights=\[([^\]]*)\]", report)
    assert printed is not None
    assert [round(w, 4) for w in weights] == [float(w) for w in printed.group(1).split(",")]
    assert line.split("): ", 1)[1] in report
    if rule == "auto_sqrt":  # the experiment's hand-pasted list is this rule on the train split
        hand = [0.5285, 0.4491, 2.1878, 0.386, 1.0, 0.6494, 1.9613, 1.4048, 0.8882, 2.5248, 2.9764]
        assert [round(w, 4) for w in weights] == hand
