"""Class labels: raw mask value -> train id lookup tables, RGB masks -> ids, and the default
class colours (the PASCAL VOC colour map, used wherever a dataset names no palette)."""

from collections.abc import Mapping

import numpy as np

from segformer.errors import InputError


def make_label_map(mapping: Mapping[int, int], default: int | None = None) -> np.ndarray:
    """256-entry uint8 lookup table raw mask value -> train id. Values missing from `mapping`
    keep their value, or become `default` when given."""
    lut = np.arange(256, dtype=np.uint8) if default is None else np.full(256, default, np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def value_label_map(
    mapping: Mapping[int, int], ignore_index: int = 255
) -> tuple[np.ndarray, np.ndarray]:
    """`data.label_map` {stored mask value: class id} -> (lookup table, allowed stored values).

    Stored values the map does not name are errors when read (see SegmentationDataset), except
    ignore_index itself, which stays ignored unless the map names it: a value to ignore must be
    mapped to ignore_index explicitly, so no label disappears unnoticed.
    """
    lut = make_label_map({}, default=ignore_index)
    allowed = np.zeros(256, bool)
    allowed[ignore_index] = True
    for raw, train_id in mapping.items():
        raw, train_id = int(raw), int(train_id)
        if not (0 <= raw <= 255 and 0 <= train_id <= 255):
            raise InputError(
                f"data.label_map entry {raw}: {train_id}: stored values and class ids must be "
                "0-255 (masks are 8-bit)"
            )
        lut[raw], allowed[raw] = train_id, True
    return lut, allowed


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
