import numpy as np
import pytest
import torch

from segformer.data.transforms import (
    IMAGENET_MEAN,
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    Resize,
    eval_transform,
    normalize,
    rescale_size,
    train_transform,
)

LABELS = np.array([0, 3, 7, 255], np.uint8)


def random_pair(seed: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    # blocky labels, so resizing has edges to get wrong
    small = rng.choice(LABELS, size=(h // 4 + 1, w // 4 + 1))
    return image, np.kron(small, np.ones((4, 4), np.uint8))[:h, :w].copy()


@pytest.mark.parametrize(
    ("size", "scale", "expected"),
    [
        ((640, 480), (2048, 512), (683, 512)),  # short side binds
        ((2048, 256), (2048, 512), (2048, 256)),  # long side binds
        ((500, 375), (480, 360), (480, 360)),
        ((100, 200), (64, 64), (32, 64)),  # portrait
    ],
)
def test_rescale_size_fits_long_and_short_bounds(size, scale, expected):
    assert rescale_size(*size, scale) == expected


TRANSFORMS = {
    "resize": Resize((97, 53), ratio_range=(0.37, 2.9)),  # odd sizes and ratios
    "crop": RandomCrop((33, 21), cat_max_ratio=0.75),
    "class_uniform_crop": RandomCrop((33, 21), cat_max_ratio=0.75, class_uniform=0.7),
    "flip": RandomFlip(0.5),
    "photometric": PhotoMetricDistortion(),
    "pad": Pad((71, 90)),
    "train": train_transform((40, 56), scale=(123, 45), ratio_range=(0.31, 2.7)),
    "eval_resize": eval_transform(scale=(77, 41)),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
def test_masks_never_gain_label_values(name):
    transform = TRANSFORMS[name]
    for seed in range(12):
        h, w = 30 + 7 * seed, 50 + 5 * seed
        image, mask = random_pair(seed, h, w)
        out_image, out_mask = transform(image, mask, np.random.default_rng(seed))
        assert out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= set(np.unique(mask)) | {255}
        assert out_image.shape[2] == 3


def test_train_output_shape_dtype_and_padding():
    transform = train_transform((64, 48), scale=(40, 30), ratio_range=(0.5, 0.5))
    image, mask = random_pair(0, 60, 80)  # resized to 40x30 at ratio 0.5 -> 20x15, then padded
    out_image, out_mask = transform(image, mask, np.random.default_rng(0))
    assert out_image.shape == (64, 48, 3) and out_image.dtype == np.float32
    assert out_mask.shape == (64, 48)
    assert (out_image[15:] == 0).all() and (out_image[:, 20:] == 0).all()
    assert (out_mask[15:] == 255).all() and (out_mask[:, 20:] == 255).all()
    assert out_mask[:15, :20].size and out_mask[:15, :20].max() <= 255


def test_photometric_keeps_uint8_and_is_seeded():
    image, mask = random_pair(1, 32, 32)
    t = PhotoMetricDistortion()
    a, _ = t(image, mask, np.random.default_rng(5))
    b, _ = t(image, mask, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == image.shape
    np.testing.assert_array_equal(a, b)
    outputs = [t(image, mask, np.random.default_rng(s))[0] for s in range(8)]
    assert any(not np.array_equal(out, image) for out in outputs)


def test_eval_transform_only_normalises_by_default():
    image = np.broadcast_to(IMAGENET_MEAN.round().astype(np.uint8), (5, 7, 3)).copy()
    mask = np.zeros((5, 7), np.uint8)
    out_image, out_mask = eval_transform()(image, mask, np.random.default_rng(0))
    assert out_image.shape == (5, 7, 3) and np.abs(out_image).max() < 0.01
    assert out_mask is mask


def test_eval_resize_resizes_the_image_only():
    image, mask = random_pair(0, 48, 64)
    out_image, out_mask = eval_transform(scale=(128, 96))(image, mask, np.random.default_rng(0))
    assert out_image.shape == (96, 128, 3) and out_mask.shape == (48, 64)


def _max_ratio(crop: np.ndarray, ignore: int = 255) -> float:
    counts = np.bincount(crop.ravel(), minlength=256)
    counts[ignore] = 0
    return counts.max() / counts.sum()


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    # class 0 everywhere, class 1 in the last 100 columns: only the 49 crops at 225 < x < 275
    # of the 301 are balanced (p = 0.16), so 11 draws find one with p = 1 - 0.84 ** 11 = 0.86
    mask = np.zeros((100, 400), np.uint8)
    mask[:, 300:] = 1
    mask[:10] = 255  # ignored pixels do not count
    image = np.zeros((100, 400, 3), np.uint8)

    def balanced_fraction(cat_max_ratio: float) -> float:
        crop = RandomCrop((100, 100), cat_max_ratio)
        crops = [crop(image, mask, np.random.default_rng(s))[1] for s in range(200)]
        return np.mean([_max_ratio(c) < 0.75 for c in crops])

    assert balanced_fraction(1.0) < 0.3
    assert balanced_fraction(0.75) > 0.75


def test_cat_max_ratio_gives_up_after_ten_redraws():
    mask = np.full((50, 50), 2, np.uint8)  # no balanced crop exists
    crop = RandomCrop((20, 20), cat_max_ratio=0.75)
    _, out = crop(np.zeros((50, 50, 3), np.uint8), mask, np.random.default_rng(0))
    assert out.shape == (20, 20) and (out == 2).all()


def test_class_uniform_crops_find_a_rare_class_as_often_as_a_common_one():
    # road (0) everywhere but one 6x6 pedestrian (5) in a corner and an ignored band: a random
    # 40x40 crop holds the pedestrian (10/161 x 10/261) 0.2 % of the time, a class-uniform one
    # half the time
    mask = np.zeros((200, 300), np.uint8)
    mask[190:196, 290:296] = 5
    mask[:20] = 255
    image = np.repeat(mask[..., None], 3, axis=2)  # the image repeats the mask: alignment check

    def with_pedestrian(class_uniform: float) -> float:
        crop = RandomCrop((40, 40), class_uniform=class_uniform)
        hits = []
        for seed in range(400):
            out, out_mask = crop(image, mask, np.random.default_rng(seed))
            assert out_mask.shape == (40, 40)  # near the border the crop moves inside
            np.testing.assert_array_equal(out[..., 0], out_mask)
            hits.append((out_mask == 5).any())
        return float(np.mean(hits))

    assert with_pedestrian(0.0) < 0.02
    assert 0.4 < with_pedestrian(1.0) < 0.6  # road or pedestrian, never the ignored band
    assert 0.2 < with_pedestrian(0.5) < 0.4


def test_class_uniform_crop_of_small_or_unlabelled_masks():
    crop = RandomCrop((64, 64), class_uniform=1.0)
    mask = np.full((30, 50), 255, np.uint8)  # nothing labelled: an ordinary random crop
    image = np.zeros((30, 50, 3), np.uint8)
    out, out_mask = crop(image, mask, np.random.default_rng(0))
    assert out.shape == (30, 50, 3) and out_mask.shape == (30, 50)  # Pad fills up later
    mask[3, 4] = 2
    assert (crop(image, mask, np.random.default_rng(1))[1] == 2).any()
    with pytest.raises(ValueError, match="class_uniform is a probability"):
        RandomCrop((8, 8), class_uniform=1.5)


def test_normalize_matches_data_pipeline():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected, _ = Normalize()(image, np.zeros((5, 7), np.uint8), np.random.default_rng(0))
    got = normalize(torch.from_numpy(image)[None])[0]  # (3, H, W)
    assert torch.equal(got, torch.from_numpy(expected).permute(2, 0, 1))
