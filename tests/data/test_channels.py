"""data/channels.py: images as people have them (bands, bit depth, alpha) read from real files,
normalised per channel, and carried through the train pipeline."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from owndata import class_mask, image_for, write_image
from PIL import Image

from segformer.data.channels import ImageFormat, read_bands
from segformer.data.reading import read_image
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform


def _rgb(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


# 8-bit files the default format must read exactly as the RGB reader did before
EIGHT_BIT = {
    "rgb.jpg": lambda p: _save(p, Image.fromarray(_rgb())),
    "rgb.png": lambda p: _save(p, Image.fromarray(_rgb())),
    "gray.jpg": lambda p: _save(p, Image.fromarray(_rgb()[..., 0])),
    "palette.png": lambda p: _save(p, Image.fromarray(_rgb()).convert("P")),
    "rgba.png": lambda p: _save(p, Image.fromarray(np.dstack([_rgb(), _rgb(1)[..., :1]]))),
    "exif.jpg": lambda p: _save(p, Image.fromarray(_rgb()), exif=_rotated_exif()),
    "rgb.tif": lambda p: _save(p, Image.fromarray(_rgb())),
}


def _rotated_exif() -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    return exif


@pytest.mark.parametrize("name", list(EIGHT_BIT))
def test_default_format_reads_8_bit_files_like_the_rgb_reader(tmp_path: Path, name: str) -> None:
    path = EIGHT_BIT[name](tmp_path / name)
    got = ImageFormat().read(path)
    assert got.dtype == np.uint8 and got.shape[2] == 3
    np.testing.assert_array_equal(got, read_image(path))


def test_one_band_16_bit_tiff(tmp_path: Path) -> None:
    image = image_for(class_mask(0), "tiff16", 0)  # (H, W) uint16
    path = tmp_path / "a.tif"
    write_image(path, image)
    got = ImageFormat(in_channels=1, max_value=65535).read(path)
    assert got.dtype == np.uint16 and got.shape == (*image.shape, 1)
    np.testing.assert_array_equal(got[..., 0], image)
    # read as if it were 8-bit: refused, naming the file and the fix
    with pytest.raises(ValueError, match=r"a\.tif is 16-bit .* data\.max_value=65535"):
        ImageFormat(in_channels=1).read(path)
    # given per-band statistics, the scale is theirs: no max_value needed
    assert ImageFormat(in_channels=1, mean=(30000.0,), std=(9000.0,)).read(path).shape[2] == 1


@pytest.mark.parametrize("planar", [False, True], ids=["contig", "planar"])
def test_four_band_tiff_bands_last_and_selected(tmp_path: Path, planar: bool) -> None:
    image = image_for(class_mask(1), "tiff4", 1)  # (H, W, 4) uint16
    path = tmp_path / "b.tif"
    write_image(path, image, planar=planar)
    np.testing.assert_array_equal(ImageFormat(in_channels=4, max_value=65535).read(path), image)
    picked = ImageFormat(in_channels=3, bands=(3, 2, 1), max_value=65535).read(path)
    np.testing.assert_array_equal(picked, image[..., [3, 2, 1]])
    with pytest.raises(ValueError, match=r"b\.tif has 4 channel.*data\.in_channels=3.*data\.bands"):
        ImageFormat(max_value=65535).read(path)
    with pytest.raises(ValueError, match="asks for band 7"):
        ImageFormat(in_channels=1, bands=(7,), max_value=65535).read(path)


def test_alpha_marked_tiff_band_needs_keep_alpha(tmp_path: Path) -> None:
    path = tmp_path / "rgba.tif"
    image = np.random.default_rng(0).integers(0, 256, (8, 9, 4), dtype=np.uint8)
    tifffile.imwrite(path, image, photometric="rgb", extrasamples=["unassalpha"])
    np.testing.assert_array_equal(ImageFormat().read(path), image[..., :3])  # alpha dropped
    with pytest.raises(ValueError, match="keep_alpha=true"):
        ImageFormat(in_channels=4).read(path)
    np.testing.assert_array_equal(ImageFormat(in_channels=4, keep_alpha=True).read(path), image)


def test_grayscale_jpeg_one_band_or_repeated(tmp_path: Path) -> None:
    path = tmp_path / "g.jpg"
    write_image(path, image_for(class_mask(2), "gray", 2))
    one = ImageFormat(in_channels=1).read(path)
    assert one.shape == (32, 32, 1) and one.dtype == np.uint8
    np.testing.assert_array_equal(ImageFormat().read(path), np.repeat(one, 3, axis=2))


def test_rgba_png_alpha_dropped_unless_kept(tmp_path: Path) -> None:
    image = image_for(class_mask(3), "rgba", 3)
    path = tmp_path / "a.png"
    write_image(path, image)
    np.testing.assert_array_equal(ImageFormat().read(path), image[..., :3])
    np.testing.assert_array_equal(ImageFormat(in_channels=4, keep_alpha=True).read(path), image)
    assert read_bands(path)[1]  # alpha seen


def test_sixteen_bit_png(tmp_path: Path) -> None:
    image = (np.arange(48 * 3, dtype=np.uint16).reshape(6, 8, 3) * 400).astype(np.uint16)
    path = tmp_path / "c.png"
    import cv2

    cv2.imwrite(str(path), image[..., ::-1])  # cv2 writes BGR 16-bit PNGs
    np.testing.assert_array_equal(ImageFormat(max_value=65535).read(path), image)


def test_default_statistics_are_imagenet_and_adapt_to_bands() -> None:
    mean, std = ImageFormat().mean_std()
    np.testing.assert_array_equal(mean, IMAGENET_MEAN)  # bit-identical: same pipeline as before
    np.testing.assert_array_equal(std, IMAGENET_STD)
    gray_mean, _ = ImageFormat(in_channels=1).mean_std()
    assert gray_mean == pytest.approx([IMAGENET_MEAN.mean()])
    four, _ = ImageFormat(in_channels=4, max_value=65535).mean_std()
    assert four == pytest.approx(IMAGENET_MEAN[[0, 1, 2, 0]] / 255 * 65535, rel=1e-6)


def test_configured_statistics_and_their_errors() -> None:
    fmt = ImageFormat(in_channels=2, mean=(10.0,), std=(2.0, 4.0))
    mean, std = fmt.mean_std()
    assert mean.tolist() == [10.0, 10.0] and std.tolist() == [2.0, 4.0]
    with pytest.raises(ValueError, match=r"data\.mean has 3 values"):
        ImageFormat(in_channels=2, mean=(1.0, 2.0, 3.0), std=(1.0,))
    with pytest.raises(ValueError, match=r"both data\.mean and data\.std"):
        ImageFormat(mean=(1.0, 2.0, 3.0))
    assert ImageFormat.from_dict(fmt.to_dict()) == fmt  # what checkpoints keep


def test_train_pipeline_keeps_bands_and_normalises_16_bit() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65536, (40, 50, 4), dtype=np.uint16)
    mask = np.kron(rng.choice(np.array([0, 1, 255], np.uint8), (10, 13)), np.ones((4, 4)))[
        :40, :50
    ].astype(np.uint8)
    mean, std = ImageFormat(in_channels=4, max_value=65535).mean_std()
    pipeline = train_transform((24, 24), (50, 40), (0.5, 2.0), 0.75, mean=mean, std=std)
    for seed in range(6):  # resize, crop, flip, photometric (brightness/contrast) and pad
        out, out_mask = pipeline(image, mask, np.random.default_rng(seed))
        assert out.shape == (24, 24, 4) and out.dtype == np.float32
        assert np.isfinite(out).all() and np.abs(out).max() < 5  # on the normalised scale
        assert set(np.unique(out_mask)) <= {0, 1, 255}
