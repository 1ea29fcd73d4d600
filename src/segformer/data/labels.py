"""Class labels: raw mask value -> train id lookup tables, RGB masks -> ids, and the default
class colours (the PASCAL VOC colour map, used wherever a dataset names no palette)."""

from collections.abc import Mapping

import numpy as np


def make_label_map(mapping: Mapping[int, int], default: int | None = None) -> np.ndarray:
    """256-entry uint8 lookup table raw mask value -> train id. Values missing from `mapping`
    keep their value, or become `default` when given."""
    lut = np.arange(256, dtype=np.uint8) if default is None else np.full(256, default, np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def reduce_zero_label_map(ignore_index: int = 255) -> np.ndarray:
    """mmseg reduce_zero_label: 0 (unlabelled) -> ignore, v -> v - 1, 255 -> ignore."""
    shifted = {v: v - 1 for v in range(1, 255)}
    return make_label_map({**shifted, 0: ignore_index, 255: ignore_index})


def default_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bits of the class id spread over R, G, B), uint8 (K, 3)."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for k in range(num_classes):
        c = k
        for shift in range(7, -1, -1):
            for channel in range(3):
                palette[k, channel] |= ((c >> channel) & 1) << shift
            c >>= 3
    return palette


def rgb_to_index(rgb: np.ndarray, palette: np.ndarray, fill: int) -> np.ndarray:
    """Colour mask (H, W, 3) -> class ids (H, W) uint8; colours not in `palette` become `fill`."""
    weights = np.array([1 << 16, 1 << 8, 1], np.int32)
    codes = rgb.astype(np.int32) @ weights  # (H, W)
    palette_codes = palette.astype(np.int32) @ weights  # (K,)
    order = np.argsort(palette_codes)
    pos = np.searchsorted(palette_codes[order], codes).clip(max=len(order) - 1)
    ids = order[pos]
    return np.where(palette_codes[ids] == codes, ids, fill).astype(np.uint8)
