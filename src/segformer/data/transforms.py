"""Paired image/mask transforms: the SegFormer (mmseg) train pipeline and the eval transform.

Every transform maps (image (H, W, C), mask uint8 (H, W)) with an explicit
`np.random.Generator` to a new pair, so seeding stays with the caller (see data/dataset.py).
Images are uint8 RGB for the usual datasets, or any number of bands in uint8 / uint16 / float32
(data/channels.py); every transform here keeps the band count and dtype until Normalize. The
semantics follow mmseg 0.x, which the official SegFormer configs use: keep-ratio Resize with a
ratio range, RandomCrop with cat_max_ratio, RandomFlip, PhotoMetricDistortion, Normalize, Pad.
Albumentations has no equivalent of the keep-ratio "fit in (long, short) x ratio" resize or of
cat_max_ratio, so these are small cv2/numpy functions instead; any albumentations transform can
join a pipeline through `Albumentations` (`augmentation_list` wraps them automatically). Masks are
only ever resampled with nearest-neighbour and padded with ignore_index: no transform creates a
new label value.
"""

from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch

from segformer.data.channels import IMAGENET_MEAN01, IMAGENET_STD01
from segformer.errors import InputError

# OpenCV's thread pool does not survive fork: a DataLoader worker forked after a threaded cv2
# call in the main process deadlocks. Single-threaded cv2 (as mmengine does) avoids that; the
# parallelism comes from the DataLoader workers.
cv2.setNumThreads(0)

# ImageNet statistics on the 0-255 scale (mmseg: mean 123.675, 116.28, 103.53; std 58.395, ...)
IMAGENET_MEAN = IMAGENET_MEAN01 * 255
IMAGENET_STD = IMAGENET_STD01 * 255

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def rescale_size(width: int, height: int, scale: Sequence[float]) -> tuple[int, int]:
    """(w, h) of the largest keep-ratio resize with long side <= max(scale), short <= min(scale).

    This is mmcv's `imrescale`: scale=(2048, 512) on a 640x480 image gives 683x512.
    """
    factor = min(max(scale) / max(width, height), min(scale) / min(width, height))
    return int(width * factor + 0.5), int(height * factor + 0.5)


def _bands(image: np.ndarray) -> np.ndarray:
    # cv2 returns (H, W) for a one-band (H, W, 1) input; keep the band axis
    return image[..., None] if image.ndim == 2 else image


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
        image = _bands(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR))
        if self.resize_mask:
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        return image, mask


class RandomCrop:
    """Random crop of at most `size` (h, w); re-drawn while one class fills >= cat_max_ratio.

    Like mmseg: up to 10 re-draws while the crop holds a single class or one class (ignore
    excluded) covers >= cat_max_ratio of the labelled pixels; the last draw is kept unchecked.
    class_uniform: the probability that a crop is instead placed around a random pixel of a class
    drawn uniformly from those in the mask (class-uniform sampling, Zhu et al., CVPR 2019): a
    pedestrian covering 1 % of a street image then appears in a crop as often as the road, so
    small crops see rare classes far more often than their area would give them.
    """

    def __init__(
        self,
        size: Sequence[int],
        cat_max_ratio: float = 1.0,
        ignore_index: int = 255,
        class_uniform: float = 0.0,
    ) -> None:
        if not 0.0 <= class_uniform <= 1.0:
            raise InputError(f"class_uniform is a probability (0-1), got {class_uniform}")
        self.size = tuple(size)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.class_uniform = class_uniform

    def _offset(self, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[int, int]:
        return (
            int(rng.integers(max(shape[0] - self.size[0], 0) + 1)),
            int(rng.integers(max(shape[1] - self.size[1], 0) + 1)),
        )

    def _counts(self, mask: np.ndarray) -> np.ndarray:
        counts = np.bincount(mask.ravel(), minlength=256)  # O(N), unlike np.unique's sort
        counts[self.ignore_index] = 0
        return counts

    def _balanced(self, crop: np.ndarray) -> bool:
        counts = self._counts(crop)
        counts = counts[counts > 0]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def _around_class(self, mask: np.ndarray, rng: np.random.Generator) -> tuple[int, int] | None:
        """An offset whose crop holds a random pixel of a uniformly drawn class (None: no label)."""
        present = np.flatnonzero(self._counts(mask))
        if len(present) == 0:
            return None
        ys, xs = np.nonzero(mask == rng.choice(present))
        i = int(rng.integers(len(ys)))
        # the pixel lands anywhere in the crop, not always at its centre
        y = int(ys[i]) - int(rng.integers(self.size[0]))
        x = int(xs[i]) - int(rng.integers(self.size[1]))
        return (
            min(max(y, 0), max(mask.shape[0] - self.size[0], 0)),
            min(max(x, 0), max(mask.shape[1] - self.size[1], 0)),
        )

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.size
        offset = None
        if self.class_uniform > 0 and rng.random() < self.class_uniform:
            offset = self._around_class(mask, rng)
        if offset is None:
            offset = self._offset(mask.shape, rng)
            if self.cat_max_ratio < 1.0:
                for _ in range(10):
                    if self._balanced(mask[offset[0] : offset[0] + h, offset[1] : offset[1] + w]):
                        break
                    offset = self._offset(mask.shape, rng)
        y, x = offset
        return image[y : y + h, x : x + w], mask[y : y + h, x : x + w]


class RandomFlip:
    """Flip with probability p: horizontal (the paper's) or vertical (aerial, medical images)."""

    def __init__(self, p: float = 0.5, direction: str = "horizontal") -> None:
        if direction not in ("horizontal", "vertical"):
            raise InputError(f"RandomFlip direction={direction!r}; expected horizontal|vertical")
        self.p = p
        self.direction = direction

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            code = 1 if self.direction == "horizontal" else 0
            return _bands(cv2.flip(image, code)), cv2.flip(mask, code)
        return image, mask


class RandomRotate90:
    """With probability p, rotate by 90, 180 or 270 degrees (uniform); exact, no resampling.

    A quarter turn swaps height and width: put it before RandomCrop (or use square crops) so the
    crop still yields crop_size.
    """

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if rng.random() < self.p:
            k = int(rng.integers(1, 4))
            return np.ascontiguousarray(np.rot90(image, k)), np.ascontiguousarray(np.rot90(mask, k))
        return image, mask


def _affine_lut(alpha: float, beta: float) -> np.ndarray:
    # uint8 -> uint8 table of clip(x * alpha + beta, 0, 255), truncated like mmseg's astype(uint8)
    return np.clip(np.arange(256, dtype=np.float32) * alpha + beta, 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg PhotoMetricDistortion on a uint8 RGB image; each step applied with p=0.5.

    brightness (+U(-32, 32)), then contrast (xU(0.5, 1.5)) either first or last, saturation
    (xU(0.5, 1.5)) and hue (+randint[-18, 18) in OpenCV's 0-179 hue). Pointwise steps are
    256-entry lookup tables, so this costs a few cv2.LUT calls and one HSV round trip.

    Other images (gray, multi-band, 16-bit, float) get the brightness and contrast steps only
    (saturation and hue need RGB): the brightness delta is in 8-bit units scaled to the dtype's
    range (x 257 for uint16), values clipped to that range; float images get contrast only.
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

    def _any_bands(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Brightness, then contrast, of a non-RGB or non-8-bit image in float32 arithmetic."""
        top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(image.dtype)
        out = image.astype(np.float32)
        delta = rng.uniform(-self.brightness_delta, self.brightness_delta)
        if rng.integers(2) and top is not None:  # a float image has no known range to shift in
            out += delta * top / 255.0
        if rng.integers(2):
            out *= rng.uniform(*self.contrast_range)
        if top is None:
            return out
        return np.clip(out, 0, top).astype(image.dtype)  # truncated, like the uint8 tables

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if image.dtype != np.uint8 or image.shape[2] != 3:
            return self._any_bands(image, rng), mask
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
    """(H, W, C) -> float32 (x - mean) / std per channel, in stored units; default: ImageNet
    statistics x 255 (8-bit RGB). data.channels.ImageFormat.mean_std gives the dataset's."""

    def __init__(
        self, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        self.mean = IMAGENET_MEAN if mean is None else np.asarray(mean, np.float32)
        self.std = IMAGENET_STD if std is None else np.asarray(std, np.float32)

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        image = image.astype(np.float32)
        image -= self.mean
        image /= self.std
        return image, mask


def normalize(
    images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> torch.Tensor:
    """(B, H, W, C) uint8 / uint16 / float -> float32 (B, C, H, W): `Normalize` on a batch of
    tensors, on their device (inference outside the DataLoader). Default: ImageNet, 8-bit RGB."""
    mean = images.new_tensor(IMAGENET_MEAN if mean is None else mean, dtype=torch.float32)
    std = images.new_tensor(IMAGENET_STD if std is None else std, dtype=torch.float32)
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


class Albumentations:
    """Any albumentations transform (or A.Compose) as a pipeline step: it gets image and mask,
    seeded from the pipeline's generator (so runs and resumed runs repeat), with the mask
    interpolated nearest-neighbour and filled with ignore_index where the transform pads or
    rotates in new pixels. A mask that still gains a label value it did not hold is an error
    naming the transform. Pixel-level albumentations transforms expect uint8 (or float32 in
    [0, 1]) images; geometric ones take any number of bands."""

    def __init__(self, transform: Any, ignore_index: int = 255) -> None:
        self.transform = transform
        self.ignore_index = ignore_index
        steps = getattr(transform, "transforms", None) or [transform]
        for step in steps:  # mask settings of every step (nested Compose included)
            for sub in getattr(step, "transforms", None) or [step]:
                if hasattr(sub, "mask_interpolation"):
                    sub.mask_interpolation = cv2.INTER_NEAREST
                if hasattr(sub, "fill_mask"):
                    sub.fill_mask = ignore_index

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        self.transform.set_random_seed(int(rng.integers(2**31)))
        out = self.transform(image=image, mask=mask)
        new_image, new_mask = _bands(out["image"]), out["mask"]
        held = np.bincount(mask.ravel(), minlength=256) > 0
        held[self.ignore_index] = True
        gained = ~held[new_mask.ravel()]
        if gained.any():
            raise InputError(
                f"{type(self.transform).__name__} gave the mask label {new_mask.ravel()[gained][0]}"
                " that it did not hold; albumentations transforms must move labels, not make "
                "them (nearest-neighbour masks, ignore_index fill)"
            )
        return new_image, new_mask


def as_transform(step: Any, ignore_index: int = 255) -> Transform:
    """A pipeline step from config: our transforms as they are, albumentations ones wrapped."""
    if type(step).__module__.split(".")[0] == "albumentations":
        return Albumentations(step, ignore_index)
    if not callable(step):
        raise TypeError(f"train transform {step!r} is not callable; give a `_target_` transform")
    return step


def paper_augmentations(
    crop_size: Sequence[int],
    scale: Sequence[int],
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
    photometric: bool = True,
    class_uniform: float = 0.0,
) -> list[Transform]:
    """The SegFormer (mmseg) augmentation: keep-ratio random resize, crop with cat_max_ratio,
    horizontal flip, photometric distortion (configs/augment/paper.yaml lists the same);
    class_uniform > 0 places that share of the crops around a class (RandomCrop)."""
    transforms: list[Transform] = [
        Resize(scale, ratio_range),
        RandomCrop(crop_size, cat_max_ratio, ignore_index, class_uniform),
        RandomFlip(0.5),
    ]
    if photometric:
        transforms.append(PhotoMetricDistortion())
    return transforms


def train_transform(
    crop_size: Sequence[int],
    scale: Sequence[int],
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    ignore_index: int = 255,
    photometric: bool = True,
    class_uniform: float = 0.0,
    augmentations: Sequence[Any] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Compose:
    """The train pipeline -> image float32 (h, w, C), mask uint8 (h, w) = crop_size:
    `augmentations` (default: the paper's, from the arguments before it), then Normalize
    (`mean`/`std`, default ImageNet) and Pad to crop_size."""
    if augmentations is None:
        steps = paper_augmentations(
            crop_size, scale, ratio_range, cat_max_ratio, ignore_index, photometric, class_uniform
        )
    else:
        steps = [as_transform(step, ignore_index) for step in augmentations]
    return Compose([*steps, Normalize(mean, std), Pad(crop_size, ignore_index)])


def eval_transform(
    scale: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Compose:
    """Normalisation only; with `scale`, the image (not the mask) is keep-ratio resized first."""
    transforms: list[Transform] = [] if scale is None else [Resize(scale, resize_mask=False)]
    return Compose([*transforms, Normalize(mean, std)])
