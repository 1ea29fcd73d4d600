"""Class maps as pictures: palette colouring, overlays, image | truth | prediction grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD

IGNORE_COLOR = (0, 0, 0)


def denormalize(image: torch.Tensor) -> np.ndarray:
    """ImageNet-normalised (3, H, W) float -> (H, W, 3) uint8."""
    mean = image.new_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]  # 0-255 scale
    std = image.new_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    rgb = (image.float() * std + mean).clamp(0, 255)
    return rgb.round().byte().permute(1, 2, 0).cpu().numpy()


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
