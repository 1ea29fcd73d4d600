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


# --- the validation picture (callbacks.PredictionGrid): samples, columns, legend

COLUMNS = ("image", "ground truth", "prediction", "errors")
ERROR_COLOR = (255, 0, 0)
HATCH_COLORS = ((255, 255, 255), (160, 160, 160))  # ignore pixels: grey-white diagonal stripes


def spread_samples(
    keys: Sequence[str | int], count: int, groups: Sequence[str] | None = None
) -> list[int]:
    """Positions of `count` samples spread over a split: in the order of `keys` (file paths),
    evenly spaced; with `groups` (one per sample) one sample per group first (groups evenly
    spaced over their sorted names when there are more groups than samples), further ones to
    the largest groups, evenly spaced within each group. Returned in key order."""
    n = len(keys)
    count = max(0, min(count, n))
    order = sorted(range(n), key=lambda i: keys[i])
    members: dict[str, list[int]] = {}
    for i in order:
        members.setdefault("" if groups is None else str(groups[i]), []).append(i)
    names = sorted(members)
    if count < len(names):  # one each from groups spread over the sorted names
        names = [names[(2 * j + 1) * len(names) // (2 * count)] for j in range(count)]
    taken = dict.fromkeys(names, 0)
    left = count
    by_size = sorted(names, key=lambda g: -len(members[g]))
    for round_order in [names] + [by_size] * count:
        for g in round_order:
            if left and taken[g] < len(members[g]):
                taken[g] += 1
                left -= 1
        if not left:
            break
    chosen = [
        members[g][(2 * j + 1) * len(members[g]) // (2 * m)]
        for g, m in taken.items()
        for j in range(m)
    ]
    rank = {i: r for r, i in enumerate(order)}
    return sorted(chosen, key=rank.__getitem__)


def resize_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W) class ids at (height, width), nearest neighbour (any integer dtype)."""
    h, w = mask.shape
    ys = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(np.int64)
    xs = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(np.int64)
    return mask[ys[:, None], xs[None, :]]


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, 3) uint8 at (height, width): area-averaged down, nearest up (pixels stay crisp)."""
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    down = height <= image.shape[0] and width <= image.shape[1]
    resample = Image.Resampling.BOX if down else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def hatch(height: int, width: int, period: int = 6) -> np.ndarray:
    """(H, W, 3) uint8 diagonal stripes: how ignore pixels look in the picture."""
    y, x = np.mgrid[0:height, 0:width]
    stripe = ((x + y) % period) < period // 2
    return np.where(stripe[..., None], *(np.array(c, np.uint8) for c in HATCH_COLORS))


def class_picture(mask: np.ndarray, palette: np.ndarray, ignore_index: int) -> np.ndarray:
    """Class colours, ignore pixels (and ids outside the palette) hatched."""
    picture = colorize(mask, palette)
    ignored = (mask == ignore_index) | (mask < 0) | (mask >= len(palette))
    return np.where(ignored[..., None], hatch(*mask.shape), picture)


def error_picture(
    image: np.ndarray, mask: np.ndarray, pred: np.ndarray, ignore_index: int
) -> np.ndarray:
    """The image faded to grey, pixels where the prediction differs from the label in red,
    ignore pixels (not scored) hatched."""
    gray = image.astype(np.float32).mean(axis=2, keepdims=True)
    picture = np.repeat(gray * 0.45 + 110, 3, axis=2).round().astype(np.uint8)
    ignored = mask == ignore_index
    wrong = (pred != mask) & ~ignored
    picture[wrong] = ERROR_COLOR
    return np.where(ignored[..., None], hatch(*mask.shape), picture)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable (FreeType)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()  # bitmap


def legend_classes(
    masks: Sequence[np.ndarray], preds: Sequence[np.ndarray], num_classes: int, max_classes: int
) -> list[int]:
    """The classes a legend lists: all of them up to `max_classes`, else those present in the
    shown ground truth or predictions."""
    if num_classes <= max_classes:
        return list(range(num_classes))
    present = set()
    for array in (*masks, *preds):
        present.update(int(v) for v in np.unique(array) if 0 <= v < num_classes)
    return sorted(present)


def prediction_figure(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    palette: np.ndarray,
    class_names: Sequence[str],
    ignore_index: int = 255,
    captions: Sequence[str] | None = None,
    title: str = "",
    legend_max: int = 12,
    min_side: int = 128,
    gap: int = 6,
) -> tuple[np.ndarray, list[list[tuple[int, int, int, int]]]]:
    """(picture, cells): one (H, W, 3) uint8 picture with a title line, columns titled
    image | ground truth | prediction | errors, one row per sample (its caption above it) and a
    legend of the class colours and names (all classes up to `legend_max`, else those in the
    shown samples), the ignore hatch and the error colour. Images, masks and predictions of a
    row share one size; samples smaller than `min_side` are enlarged (nearest) so the text
    stays readable beside them.
    cells: the (x, y, width, height) of every row's four pictures."""
    from PIL import Image, ImageDraw

    palette = np.asarray(palette, np.uint8)
    font, small = _font(15), _font(13)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str, f) -> tuple[int, int]:
        left, top, right, bottom = probe.textbbox((0, 0), text, font=f)
        return right - left, bottom - top

    line = text_size("Ag", font)[1] + 8
    small_line = text_size("Ag", small)[1] + 6
    cells = []
    for image, mask, pred in zip(images, masks, preds, strict=True):
        h, w = mask.shape
        factor = max(1, -(-min_side // max(h, w)))  # integer enlargement of small samples
        h, w = h * factor, w * factor
        image = resize_image(image, h, w)
        mask, pred = resize_nearest(mask, h, w), resize_nearest(pred, h, w)
        cells.append(
            [
                image,
                class_picture(mask, palette, ignore_index),
                class_picture(pred, palette, ignore_index),
                error_picture(image, mask, pred, ignore_index),
            ]
        )
    col_w = max(max(c[0].shape[1] for c in cells), *(text_size(t, font)[0] + 8 for t in COLUMNS))
    width = len(COLUMNS) * col_w + (len(COLUMNS) + 1) * gap

    # legend entries: (swatch, label) laid out in lines across the width
    shown = legend_classes(masks, preds, len(palette), legend_max)
    swatch = small_line - 4
    entries = [(np.broadcast_to(palette[k], (swatch, swatch, 3)), class_names[k]) for k in shown]
    if any((m == ignore_index).any() for m in masks):
        entries.append((hatch(swatch, swatch, 4), "ignore (not scored)"))
    entries.append((np.broadcast_to(np.uint8(ERROR_COLOR), (swatch, swatch, 3)), "wrong pixel"))
    placed, x, y = [], gap, 0
    for pic, label in entries:
        w_entry = swatch + 4 + text_size(label, small)[0] + 14
        if x + w_entry > width - gap and x > gap:
            x, y = gap, y + small_line
        placed.append((x, y, pic, label))
        x += w_entry
    legend_note = ""
    if len(shown) < len(palette):
        legend_note = f"{len(shown)} of {len(palette)} classes: those in these samples"
    legend_h = y + small_line + (small_line if legend_note else 0) + gap

    caption_h = small_line if captions else 0
    row_h = [c[0].shape[0] + caption_h + gap for c in cells]
    top = gap + (line if title else 0) + line
    height = top + sum(row_h) + legend_h
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), title, fill=(0, 0, 0), font=font)
    for c, name in enumerate(COLUMNS):
        x0 = gap + c * (col_w + gap)
        tw = text_size(name, font)[0]
        draw.text((x0 + (col_w - tw) // 2, top - line), name, fill=(0, 0, 0), font=font)
    y, boxes = top, []
    for r, row in enumerate(cells):
        if captions:
            draw.text((gap, y), captions[r], fill=(60, 60, 60), font=small)
            y += caption_h
        for c, pic in enumerate(row):
            canvas.paste(Image.fromarray(np.ascontiguousarray(pic)), (gap + c * (col_w + gap), y))
        boxes.append(
            [(gap + c * (col_w + gap), y, p.shape[1], p.shape[0]) for c, p in enumerate(row)]
        )
        y += row_h[r] - caption_h
    for x, dy, pic, label in placed:
        canvas.paste(Image.fromarray(np.ascontiguousarray(pic)), (x, y + dy + 2))
        draw.rectangle((x, y + dy + 2, x + swatch - 1, y + dy + 1 + swatch), outline=(90, 90, 90))
        draw.text((x + swatch + 4, y + dy), label, fill=(0, 0, 0), font=small)
    if legend_note:
        draw.text((gap, y + placed[-1][1] + small_line), legend_note, fill=(90, 90, 90), font=small)
    return np.asarray(canvas), boxes
