"""Class maps as pictures: palette colouring, overlays, image | truth | prediction grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IGNORE_COLOR = (0, 0, 0)


def display_rgb(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """An (H, W, 3) uint8 view of an (H, W, C) image in stored values: the first three bands as
    RGB (one or two bands: the first as gray); uint8 and 8-bit-range values as they are, wider
    ranges (16-bit, float) stretched per band from the `low` to the `high` percentile."""
    bands = image[..., :3] if image.shape[2] >= 3 else np.repeat(image[..., :1], 3, axis=2)
    if bands.dtype == np.uint8:
        return np.ascontiguousarray(bands)
    values = bands.astype(np.float32)
    if bands.dtype != np.uint16 and values.min() >= -0.5 and values.max() <= 255.5:
        return np.clip(values, 0, 255).round().astype(np.uint8)
    lo, hi = np.percentile(values.reshape(-1, 3), [low, high], axis=0)  # (3,) each
    stretched = (values - lo) / np.maximum(hi - lo, 1e-6) * 255
    return np.clip(stretched, 0, 255).round().astype(np.uint8)


def denormalize(
    image: torch.Tensor,
    mean: Sequence[float] | np.ndarray | None = None,
    std: Sequence[float] | np.ndarray | None = None,
) -> np.ndarray:
    """Normalised (C, H, W) float -> (H, W, 3) uint8 to look at: the stored values back
    (default ImageNet statistics, 8-bit RGB), then ``display_rgb`` for other band counts and
    bit depths."""
    mean = image.new_tensor(IMAGENET_MEAN if mean is None else mean, dtype=torch.float32)
    std = image.new_tensor(IMAGENET_STD if std is None else std, dtype=torch.float32)
    values = image.float() * std[:, None, None] + mean[:, None, None]  # stored units
    if values.shape[0] == 3 and values.min() >= -0.5 and values.max() <= 255.5:
        return values.clamp(0, 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return display_rgb(values.permute(1, 2, 0).cpu().numpy())


def colorize(mask: np.ndarray | torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8; ids outside the palette (ignore) are black."""
    mask = mask.cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    lut = np.zeros((256, 3), np.uint8)
    lut[:] = IGNORE_COLOR
    lut[: len(palette)] = palette
    return lut[mask.astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an (H, W, 3) uint8 image with a coloured mask."""
    blend = image.astype(np.float32) * (1 - alpha) + color_mask.astype(np.float32) * alpha
    return blend.round().astype(np.uint8)


def prediction_grid(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    palette: np.ndarray,
    gap: int = 4,
) -> np.ndarray:
    """Rows of image | ground truth | prediction, as one (H, W, 3) uint8 picture."""
    rows = []
    for image, mask, pred in zip(images, masks, preds, strict=True):
        h = image.shape[0]
        sep = np.full((h, gap, 3), 255, np.uint8)
        rows.append(
            np.concatenate([image, sep, colorize(mask, palette), sep, colorize(pred, palette)], 1)
        )
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        r = np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255)
        padded.append(r)
    return np.concatenate(padded, 0)[:-gap]
