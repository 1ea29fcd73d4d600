"""Writers of small datasets "as people have them", in their real on-disk formats: 16-bit and
multi-band TIFFs (tifffile), grayscale JPEGs, RGBA PNGs, 0/255 and palette masks, mmseg layout."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

SIZE = 32  # fixture side, pixels


def class_mask(seed: int, size: int = SIZE) -> np.ndarray:
    """(size, size) uint8 ids 0/1: a random rectangle of class 1 on class 0."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    h, w = rng.integers(size // 4, size // 2, 2)
    mask[y : y + h, x : x + w] = 1
    return mask


def image_for(mask: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """An image of `kind` whose pixels follow `mask` (so a model can learn it) plus noise."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 0.1, mask.shape)
    level = (0.3 + 0.4 * mask + noise).clip(0, 1)  # (H, W) in [0, 1]
    if kind == "tiff16":  # one band, 16 bits
        return (level * 65535).astype(np.uint16)
    if kind == "tiff4":  # 4 bands, 16 bits: RGB noise, the signal in band 3 (NIR-like)
        rgb = rng.integers(0, 65536, (*mask.shape, 3), dtype=np.uint16)
        return np.dstack([rgb, (level * 65535).astype(np.uint16)])
    if kind == "gray":  # 8-bit grayscale
        return (level * 255).astype(np.uint8)
    if kind == "rgba":  # RGB + alpha
        rgb = (np.stack([level, 1 - level, level], -1) * 255).astype(np.uint8)
        alpha = rng.integers(128, 256, mask.shape, dtype=np.uint8)
        return np.dstack([rgb, alpha])
    if kind == "rgb":
        return (np.stack([level, 1 - level, level], -1) * 255).astype(np.uint8)
    raise ValueError(kind)


SUFFIX = {"tiff16": ".tif", "tiff4": ".tif", "gray": ".jpg", "rgba": ".png", "rgb": ".png"}


def write_image(path: Path, image: np.ndarray, planar: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        # bands as GDAL writes them: photometric minisblack, no alpha; planar = (bands, H, W)
        if planar and image.ndim == 3:
            tifffile.imwrite(path, np.moveaxis(image, -1, 0), photometric="minisblack")
        else:
            tifffile.imwrite(path, image, photometric="minisblack", planarconfig="contig")
    else:
        Image.fromarray(image).save(path, quality=95)


def write_mask(path: Path, mask: np.ndarray, palette: bool = False) -> None:
    """Index PNG: mode L, or mode P with a colour palette (as VOC-style masks)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8))
    if palette:
        colors = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8)
        image.putpalette(colors.ravel().tolist())  # L -> P, indices unchanged
    image.save(path)


def make_folder(
    root: Path,
    kind: str = "rgb",
    counts: tuple[int, int] = (4, 2),
    stored: Callable[[np.ndarray], np.ndarray] | None = None,
    palette: bool = False,
    planar: bool = False,
) -> Path:
    """root/images/{train,val}/* + root/masks/{split}/*.png; `stored` maps class ids to the
    values written in the masks (e.g. x 255 for 0/255 masks)."""
    for split, n in zip(("train", "val"), counts, strict=True):
        for i in range(n):
            seed = i + (100 if split == "val" else 0)
            mask = class_mask(seed)
            write_image(
                root / "images" / split / f"s{i}{SUFFIX[kind]}", image_for(mask, kind, seed), planar
            )
            write_mask(
                root / "masks" / split / f"s{i}.png", stored(mask) if stored else mask, palette
            )
    return root


# data.* overrides of a tiny folder run (32 px, 2 classes, no workers, no label sampling cost)
def folder_overrides(root: Path) -> list[str]:
    return [
        "data=folder",
        f"data.root={root}",
        "data.classes=[bg,fg]",
        "data.crop_size=[32,32]",
        "data.scale=[32,32]",
        "data.ratio_range=[1.0,1.0]",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.val_batch_size=1",
    ]
