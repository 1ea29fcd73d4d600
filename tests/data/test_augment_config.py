"""The train augmentation as a Hydra list (configs/augment/): the paper's list reproduces the
built-in pipeline, the extra flips/rotations and albumentations transforms keep masks honest."""

from pathlib import Path

import albumentations as A
import numpy as np
import pytest
from helpers import compose_config
from hydra.utils import instantiate
from owndata import make_folder

from segformer.data.transforms import (
    Albumentations,
    RandomFlip,
    RandomRotate90,
    Resize,
    train_transform,
)

LABELS = np.array([0, 1, 255], np.uint8)


def random_pair(seed: int, h: int = 70, w: int = 90) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    small = rng.choice(LABELS, size=(h // 5 + 1, w // 5 + 1))
    return image, np.kron(small, np.ones((5, 5), np.uint8))[:h, :w].copy()


def folder_data(tmp_path: Path, augment: str | None, *extra: str) -> object:
    root = make_folder(tmp_path / "ds")
    overrides = [
        "data=folder",
        f"data.root={root}",
        "data.classes=[bg,fg]",
        "data.crop_size=[24,28]",
        "data.scale=[64,48]",
        *extra,
    ]
    cfg = compose_config("train", overrides + ([f"augment={augment}"] if augment else []), tmp_path)
    return instantiate(cfg.data)


@pytest.mark.parametrize("class_uniform", [0.0, 0.5])
def test_paper_list_gives_the_builtin_pipelines_outputs(
    tmp_path: Path, class_uniform: float
) -> None:
    extra = f"data.class_uniform={class_uniform}"
    listed = folder_data(tmp_path, "paper", extra)
    assert isinstance(listed.train_transform.transforms[0], Resize)
    assert listed.train_transform.transforms[1].class_uniform == class_uniform
    # the current code path: the pipeline built from the flat keys, as before this config
    builtin = train_transform(
        (24, 28), (64, 48), (0.5, 2.0), 0.75, 255, photometric=True, class_uniform=class_uniform
    )
    for seed in range(30):
        image, mask = random_pair(seed)
        want = builtin(image, mask, np.random.default_rng(seed))
        got = listed.train_transform(image, mask, np.random.default_rng(seed))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    # and through the dataset, keyed like the resumable sampler does
    plain = folder_data(tmp_path, None, extra)
    for key in [(0, 11), (3, 12), (2, 13)]:
        a, b = listed.dataset("train", True)[key], plain.dataset("train", True)[key]
        assert (a["image"] == b["image"]).all() and (a["mask"] == b["mask"]).all()


@pytest.mark.parametrize("augment", ["aerial", "albumentations"])
def test_augment_presets_give_crop_sized_honest_samples(tmp_path: Path, augment: str) -> None:
    datamodule = folder_data(tmp_path, augment)
    for seed in range(8):
        image, mask = random_pair(seed)
        out, out_mask = datamodule.train_transform(image, mask, np.random.default_rng(seed))
        assert out.shape == (24, 28, 3) and out_mask.shape == (24, 28)
        assert set(np.unique(out_mask)) <= set(LABELS.tolist())


def test_vertical_flip_and_quarter_turns_move_image_and_mask_together() -> None:
    image, mask = random_pair(0, 30, 40)
    out, out_mask = RandomFlip(1.0, "vertical")(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out, image[::-1])
    np.testing.assert_array_equal(out_mask, mask[::-1])
    turns = set()
    for seed in range(20):
        out, out_mask = RandomRotate90(1.0)(image, mask, np.random.default_rng(seed))
        k = next(k for k in (1, 2, 3) if np.array_equal(out_mask, np.rot90(mask, k)))
        np.testing.assert_array_equal(out, np.rot90(image, k))
        turns.add(k)
    assert turns == {1, 2, 3}
    bands = np.zeros((30, 40, 1), np.uint16)
    assert RandomFlip(1.0)(bands, mask, np.random.default_rng(0))[0].shape == (30, 40, 1)


def test_albumentations_wrapper_seeds_and_fills_masks_with_ignore() -> None:
    image, mask = random_pair(1)
    mask[:] = 1  # every pixel class 1: rotated-in corners must come out ignored, not class 0
    rotate = Albumentations(A.Rotate(limit=(30, 30), p=1.0), ignore_index=255)
    out, out_mask = rotate(image, mask, np.random.default_rng(0))
    assert set(np.unique(out_mask)) == {1, 255}
    again = rotate(image, mask, np.random.default_rng(0))
    np.testing.assert_array_equal(out, again[0])  # seeded by the pipeline's generator
    noisy = Albumentations(A.GaussNoise(std_range=(0.1, 0.2), p=1.0))
    a = noisy(image, mask, np.random.default_rng(5))[0]
    b = noisy(image, mask, np.random.default_rng(5))[0]
    c = noisy(image, mask, np.random.default_rng(6))[0]
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _relabel(mask: np.ndarray, **kwargs) -> np.ndarray:
    return np.where(mask == 1, 7, mask)


def test_albumentations_transform_inventing_labels_is_an_error() -> None:
    image, mask = random_pair(2)
    shift = Albumentations(A.Lambda(mask=_relabel, p=1.0))
    with pytest.raises(ValueError, match="Lambda gave the mask label 7"):
        shift(image, mask, np.random.default_rng(0))
