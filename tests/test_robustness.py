"""Robustness evaluation (paper Table 5): the reference imagecorruptions code applied to the
uint8 eval images before normalisation, seeded per image, and segformer-eval's report."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config

from segformer.data.synthetic import SyntheticDataModule
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segformer.eval import evaluate
from segformer.models import SegFormer
from segformer.robustness import (
    CORRUPTION_GROUPS,
    CORRUPTIONS,
    CorruptedDataset,
    corrupt_image,
    parse_corruptions,
    parse_severities,
    summarize,
)

TINY_DATA = ["data.num_val=4", "data.image_size=64", "data.val_batch_size=4", "data.num_workers=0"]


def needs_imagecorruptions() -> None:
    ic = pytest.importorskip("imagecorruptions")
    missing = set(CORRUPTIONS) - set(ic.corruption_dict)
    assert not missing, f"imagecorruptions lacks {missing}"


def test_the_paper_groups_sixteen_corruptions():
    assert len(CORRUPTIONS) == len(set(CORRUPTIONS)) == 16
    assert list(CORRUPTION_GROUPS) == ["blur", "noise", "digital", "weather"]
    assert parse_corruptions("all") == list(CORRUPTIONS)
    assert parse_corruptions("fog") == ["fog"]
    assert parse_corruptions(["fog", "frost", "fog"]) == ["fog", "frost"]
    assert parse_corruptions("[fog, frost]") == ["fog", "frost"]
    assert parse_severities("all") == [1, 2, 3, 4, 5]
    assert parse_severities(3) == [3]
    assert parse_severities([5, 1]) == [1, 5]
    with pytest.raises(ValueError, match=r"unknown \['zoom_blur'\]"):
        parse_corruptions("zoom_blur")  # ImageNet-C has it, Table 5 does not
    with pytest.raises(ValueError, match=r"severity=6; expected 'all', an integer 1-5"):
        parse_severities(6)


def test_summary_means():
    results = {
        "fog": {1: 0.8, 5: 0.4},
        "frost": {1: 0.6, 5: 0.2},
        "gaussian_noise": {1: 0.5, 5: 0.1},
    }
    report = summarize(0.9, results)
    assert report["corruptions"]["fog"] == {"group": "weather", "mIoU": {"1": 0.8, "5": 0.4},
                                            "mean": pytest.approx(0.6)}  # fmt: skip
    assert report["groups"] == {"noise": pytest.approx(0.3), "weather": pytest.approx(0.5)}
    assert report["mean"] == pytest.approx(np.mean([0.8, 0.4, 0.6, 0.2, 0.5, 0.1]))
    assert report["clean"] == 0.9 and report["severities"] == [1, 5]


def test_corrupt_image_is_seeded_and_leaves_numpy_alone():
    needs_imagecorruptions()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for name in ("gaussian_noise", "impulse_noise", "glass_blur", "spatter", "frost"):
        a, b = (corrupt_image(image, name, 3, seed=7) for _ in range(2))
        assert a.dtype == np.uint8 and a.shape == image.shape
        assert not np.array_equal(a, image), name
        assert np.array_equal(a, b), f"{name} is not deterministic for one seed"
        assert not np.array_equal(a, corrupt_image(image, name, 3, seed=8)), name
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    with pytest.raises(ValueError, match="image of 20x20 pixels; imagecorruptions needs at least"):
        corrupt_image(image[:20, :20], "fog", 1, seed=0)


def test_without_imagecorruptions(monkeypatch):
    monkeypatch.setitem(sys.modules, "imagecorruptions", None)
    image = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(ImportError, match=r"pip install --no-deps imagecorruptions-imaug"):
        corrupt_image(image, "fog", 1, seed=0)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Undo the ImageNet normalisation: float (3, H, W) -> uint8 (H, W, 3)."""
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    return (image.permute(1, 2, 0) * std + mean).round().to(torch.uint8).numpy()


def test_corrupted_dataset_changes_the_uint8_images_before_normalisation():
    needs_imagecorruptions()
    data = SyntheticDataModule(num_val=3, image_size=64, num_workers=0)
    clean = data.dataset("val", train=False)
    corrupted = CorruptedDataset(clean, "gaussian_noise", 5, seed=42)
    again = CorruptedDataset(clean, "gaussian_noise", 5, seed=42)
    assert len(corrupted) == len(clean) == 3
    for i in range(3):
        x, y, z = clean[i], corrupted[i], again[i]
        torch.testing.assert_close(y["image"], z["image"], rtol=0, atol=0)  # seed + index
        assert torch.equal(x["mask"], y["mask"]) and x["name"] == y["name"]
        # the corrupted image went through the same normalisation: back to uint8 it is the
        # reference corruption of the clean uint8 image, seeded by 42 + index
        expected = corrupt_image(to_uint8(x["image"]), "gaussian_noise", 5, seed=42 + i)
        np.testing.assert_array_equal(to_uint8(y["image"]), expected)
        assert (to_uint8(y["image"]) != to_uint8(x["image"])).mean() > 0.5
    assert not torch.equal(corrupted[0]["image"], corrupted[1]["image"])
    assert clean.transform is data.eval_transform  # the data module's dataset is untouched


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "b0_synthetic.pt"
    torch.save(SegFormer("b0", num_classes=6).state_dict(), path)
    return path


def test_eval_with_corruptions_writes_the_table(tmp_path, checkpoint, capsys):
    needs_imagecorruptions()
    overrides = [
        f"ckpt_path={checkpoint}",
        "run_name=robustness",
        "corruption=[gaussian_noise,fog,frost]",
        "severity=[1,5]",
        *TINY_DATA,
    ]
    metrics = evaluate(compose_config("eval", overrides, tmp_path))
    (run_dir,) = (tmp_path / "logs" / "eval" / "robustness").iterdir()
    report = json.loads((run_dir / "robustness.json").read_text())
    assert list(report["corruptions"]) == ["gaussian_noise", "fog", "frost"]
    assert report["severities"] == [1, 5]
    assert all(list(c["mIoU"]) == ["1", "5"] for c in report["corruptions"].values())
    assert list(report["groups"]) == ["noise", "weather"]
    cells = [v for c in report["corruptions"].values() for v in c["mIoU"].values()]
    assert all(0 <= v <= 1 for v in cells) and report["mean"] == pytest.approx(np.mean(cells))
    assert metrics == {"clean_mIoU": report["clean"], "corrupted_mIoU": report["mean"]}
    assert (run_dir / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "mIoU (%) under corruption" in out and "(group mean)" in out


@pytest.mark.slow
def test_eval_all_corruptions_all_severities(tmp_path, checkpoint):
    needs_imagecorruptions()
    overrides = [
        f"ckpt_path={checkpoint}",
        "run_name=robustness",
        "corruption=all",
        "severity=all",
        *TINY_DATA,
    ]
    evaluate(compose_config("eval", overrides, tmp_path))
    (run_dir,) = (tmp_path / "logs" / "eval" / "robustness").iterdir()
    report = json.loads((run_dir / "robustness.json").read_text())
    assert list(report["corruptions"]) == list(CORRUPTIONS)
    assert all(len(c["mIoU"]) == 5 for c in report["corruptions"].values())
    assert list(report["groups"]) == ["blur", "noise", "digital", "weather"]
