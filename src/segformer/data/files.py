"""Dataset files on disk: image and mask suffixes, indexing a folder, pairing images with masks
by name, split lists."""

from collections.abc import Mapping, Sequence
from pathlib import Path

from segformer.errors import InputError, MissingFileError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless only

Sample = tuple[Path, Path]  # (image path, mask path)


def index_files(
    folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, recursive: bool = False
) -> dict[str, Path]:
    """Files under `folder` whose name ends with one of `suffixes` (any case), keyed by their
    path relative to `folder` minus that suffix, e.g. "aachen/aachen_000000_000019"."""
    if not folder.is_dir():
        raise MissingFileError(f"folder {folder} not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        name = path.name.lower()
        suffix = next((s for s in suffixes if name.endswith(s.lower())), None)
        if suffix is None or not path.is_file():
            continue
        key = path.relative_to(folder).as_posix()[: -len(suffix)]
        if key in files:
            raise InputError(f"{files[key]} and {path} have the same name {key!r}; keep one")
        files[key] = path
    return files


def pair_files(
    images: Mapping[str, Path], masks: Mapping[str, Path], keys: Sequence[str] | None = None
) -> list[Sample]:
    """Pair images and masks by key. `keys` (a split list) selects and orders the pairs;
    without it every image needs a mask and every mask an image."""
    if keys is None:
        for key, mask in masks.items():
            if key not in images:
                raise MissingFileError(f"mask {mask} has no image (no image named {key!r})")
        keys = list(images)
    pairs = []
    for key in keys:
        if key not in images:
            raise MissingFileError(f"image {key!r} of the split list not found")
        if key not in masks:
            raise MissingFileError(f"image {images[key]} has no mask (no mask named {key!r})")
        pairs.append((images[key], masks[key]))
    return pairs


def read_split_list(path: Path) -> list[str]:
    """Sample keys of a split file: one per line, blank lines skipped."""
    if not path.is_file():
        raise MissingFileError(f"split list {path} not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]
