"""Paired image/mask transforms: the SegFormer (mmseg) train pipeline and the eval transform.

Every transform maps (image uint8 (H, W, 3) RGB, mask uint8 (H, W)) with an explicit
`np.random.Generator` to a new pair, so seeding stays with the caller (see data/dataset.py). The
semantics follow mmseg 0.x, which the official SegFormer configs use: keep-ratio Resize with a
ratio range, RandomCrop with cat_max_ratio, RandomFlip, PhotoMetricDistortion, Normalize, Pad.
Albumentations has no equivalent of the keep-ratio "fit in (long, short) x ratio" resize or of
cat_max_ratio, so these are small cv2/numpy functions instead. Masks are only ever resampled with
nearest-neighbour and padded with ignore_index: no transform creates a new label value.
"""

from collections.abc import Callable, Sequence

import cv2
import numpy as np
import torch

# OpenCV's thread pool does not survive fork: a DataLoader worker forked after a threaded cv2
# call in the main process deadlocks. Single-threaded cv2 (as mmengine does) avoids that; the
# parallelism comes from the DataLoader workers.
cv2.setNumThreads(0)

# ImageNet statistics on the 0-255 scale (mmseg: mean 123.675, 116.28, 103.53; std 58.395, ...)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def rescale_size(width: int, height: int, scale: Sequence[float]) -> tuple[int, int]:
    """(w, h) of the largest keep-ratio resize with long side <= max(scale), short <= min(scale).

    This is mmcv's `imrescale`: scale=(2048, 512) on a 640x480 image gives 683x512.
    """
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


class Compose:
    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        for transform in self.transforms:
            image, mask = transform(image, mask, rng)
        return image, mask


class Resize:
    """Keep-ratio resize to fit `scale` x r, r ~ U(ratio_range) (mmseg Resize with ratio_range).

    With resize_mask=False only the image is resized: eval keeps the label at its original
    size, so metrics are computed there (mmseg test pipeline).
    """

    def __init__(
        self,
        scale: Sequence[int],
        ratio_range: Sequence[float] = (1.0, 1.0),
        resize_mask: bool = True,
    ) -> None:
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)
        self.resize_mask = resize_mask

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        ratio = rng.uniform(*self.ratio_range)
        target = [int(s * ratio) for s in self.scale]  # mmseg truncates the scaled bounds
        size = rescale_size(image.shape[1], image.shape[0], target)
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        if self.resize_mask:
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        return image, mask


class RandomCrop:
    """Random crop of at most `size` (h, w); re-drawn while one class fills >= cat_max_ratio.

    Like mmseg: up to 10 re-draws while the crop holds a single class or one class (ignore
    excluded) covers >= cat_max_ratio of the labelled pixels; the last draw is kept unchecked.
    """

    def __init__(
        self, size: Sequence[int], cat_max_ratio: float = 1.0, ignore_index: int = 255
    ) -> None:
        self.size = tuple(size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _offset(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int]:
        return (
            int(rng.integers(max(shape[0] - self.size[0], 0) + 1)),
            int(rng.integers(max(shape[1] - self.size[1], 0) + 1)),
        )

    def _balanced(self, crop: np.ndarray) -> bool:
        counts = np.bincount(crop.ravel(), minlength=256)  # O(N), unlike np.unique's sort
        counts[self.ignore_index] = 0
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        y, x = self._offset(mask.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._balanced(mask[y : y + h, x : x + w]):
                    break
                y, x = self._offset(mask.shape, rng)
        return image[y : y + h, x : x + w], mask[y : y + h, x : x + w]


class RandomFlip:
    """Horizontal flip with probability p."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            return cv2.flip(image, 1), cv2.flip(mask, 1)
        return image, mask


def _affine_lut(alpha: float, beta: float) -> np.ndarray:
    # uint8 -> uint8 table of clip(x * alpha + beta, 0, 255), truncated like mmseg's astype(uint8)
    return np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg PhotoMetricDistortion on a uint8 RGB image; each step applied with p=0.5.

    brightness (+U(-32, 32)), then contrast (xU(0.5, 1.5)) either first or last, saturation
    (xU(0.5, 1.5)) and hue (+randint[-18, 18) in OpenCV's 0-179 hue). Pointwise steps are
    256-entry lookup tables, so this costs a few cv2.LUT calls and one HSV round trip.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            image = cv2.LUT(image, _affine_lut(rng.uniform(*self.contrast_range), 0.0))
        return image

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng.integers(2):
            delta = rng.uniform(-self.brightness_delta, self.brightness_delta)
            image = cv2.LUT(image, _affine_lut(1.0, delta))
        contrast_first = rng.integers(2)
        if contrast_first:
            image = self._contrast(image, rng)
        saturation = rng.uniform(*self.saturation_range) if rng.integers(2) else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta)) if rng.integers(2) else None
        if saturation is not None or hue is not None:
            # one HSV round trip for both steps (mmseg converts once per step)
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            if saturation is not None:
                hsv[..., 1] = _affine_lut(saturation, 0.0)[hsv[..., 1]]
            if hue is not None:
                hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + hue) % 180).astype(np.uint8)
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if not contrast_first:
            image = self._contrast(image, rng)
        return image, mask


class Normalize:
    """uint8 RGB -> float32 (x / 255 - mean) / std with ImageNet statistics."""

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        image = image.astype(np.float32)
        image -= IMAGENET_MEAN
        image /= IMAGENET_STD
        return image, mask


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, H, W, 3) RGB -> float32 (B, 3, H, W): `Normalize` on a batch of tensors, on
    their device (inference outside the DataLoader)."""
    mean = images.new_tensor(IMAGENET_MEAN, dtype=torch.float32)
    std = images.new_tensor(IMAGENET_STD, dtype=torch.float32)
    return ((images.float() - mean) / std).permute(0, 3, 1, 2)


class Pad:
    """Pad bottom/right up to `size` (h, w): image with 0 (after Normalize), mask with ignore."""

    def __init__(self, size: Sequence[int], ignore_index: int = 255) -> None:
        self.size = tuple(size)
        self.ignore_index = ignore_index

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        pad_h, pad_w = max(self.size[0] - mask.shape[0], 0), max(self.size[1] - mask.shape[1], 0)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        return image, mask


def train_transform(
    crop_size: Sequence[int],
    scale: Sequence[int],
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
    photometric: bool = True,
) -> Compose:
    """The SegFormer train pipeline -> image float32 (h, w, 3), mask uint8 (h, w) = crop_size."""
    transforms: list[Transform] = [
        Resize(scale, ratio_range),
        RandomCrop(crop_size, cat_max_ratio, ignore_index),
        RandomFlip(0.5),
    ]
    if photometric:
        transforms.append(PhotoMetricDistortion())
    transforms += [Normalize(), Pad(crop_size, ignore_index)]
    return Compose(transforms)


def eval_transform(scale: Sequence[int] | None = None) -> Compose:
    """Normalisation only; with `scale`, the image (not the mask) is keep-ratio resized first."""
    transforms: list[Transform] = [] if scale is None else [Resize(scale, resize_mask=False)]
    return Compose([*transforms, Normalize()])
