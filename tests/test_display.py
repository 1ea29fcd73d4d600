"""Pictures of non-RGB inputs (prediction grids, predict overlays): a sensible RGB view of gray,
multi-band and 16-bit images; 8-bit RGB exactly as before."""

import numpy as np
import torch

from segformer.data.channels import ImageFormat
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from segformer.visualize import denormalize, display_rgb


def test_rgb_denormalizes_back_to_its_pixels() -> None:
    image = np.random.default_rng(0).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    normalized, _ = Normalize()(image, np.zeros((6, 7), np.uint8), np.random.default_rng(0))
    got = denormalize(torch.from_numpy(normalized).permute(2, 0, 1))
    np.testing.assert_array_equal(got, image)
    mean, std = ImageFormat().mean_std()
    assert np.array_equal(mean, IMAGENET_MEAN) and np.array_equal(std, IMAGENET_STD)


def test_sixteen_bit_bands_show_the_first_three_stretched() -> None:
    rng = np.random.default_rng(1)
    image = rng.integers(1000, 5000, (20, 30, 4)).astype(np.uint16)  # dark 12-bit-like data
    mean, std = ImageFormat(in_channels=4, max_value=65535).mean_std()
    normalized, _ = Normalize(mean, std)(image, np.zeros((20, 30), np.uint8), rng)
    view = denormalize(torch.from_numpy(normalized).permute(2, 0, 1), mean, std)
    assert view.shape == (20, 30, 3) and view.dtype == np.uint8
    assert view.min() == 0 and view.max() == 255  # stretched to the display range
    np.testing.assert_array_equal(view, display_rgb(image[..., :3]))
    # brighter input, brighter view: the stretch keeps the order of values
    flat, shown = image[..., 0].ravel(), view[..., 0].ravel().astype(int)
    assert (np.diff(shown[np.argsort(flat, kind="stable")]) >= 0).all()


def test_gray_is_repeated_and_uint8_kept() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    np.testing.assert_array_equal(display_rgb(gray), np.repeat(gray, 3, axis=2))
    two = np.dstack([gray, 255 - gray])  # two bands: the first as gray
    np.testing.assert_array_equal(display_rgb(two), np.repeat(gray, 3, axis=2))
