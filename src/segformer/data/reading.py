"""Reading images and masks, with errors that name the file: uint8 RGB images (truncated JPEGs
caught) and uint8 class-id masks (index PNGs, or RGB masks decoded with a palette)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segformer.data.files import IMAGE_SUFFIXES, MASK_SUFFIXES
from segformer.data.labels import rgb_to_index
from segformer.errors import InputError, UnreadableFileError


def _truncated_jpeg(data: bytes) -> bool:
    """Whether JPEG bytes end before the end-of-image marker FF D9 (libjpeg decodes such a file
    with only a warning, the missing part grey). Walks the header segments to the first scan:
    byte stuffing keeps FF D9 out of scan data. False when the header cannot be walked."""
    pos = 2  # after the start-of-image marker FF D8
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        if data[pos + 1] == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", pos) < 0
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


@contextmanager
def image_header(path: Path) -> Iterator[Image.Image]:
    """The image opened for its header (size, EXIF), without Pillow's decompression-bomb limit:
    nothing is decoded, and a 20k x 20k scan must still be sized (to go the tiled way)."""
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as im:
            yield im
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB, EXIF rotation applied."""
    data = Path(path).read_bytes()
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:  # an empty file fails an assertion rather than returning None
        image = None
    # cv2 returns None for an unreadable or truncated PNG, but a truncated JPEG decodes
    if image is None or (data[:2] == b"\xff\xd8" and _truncated_jpeg(data)):
        raise UnreadableFileError(
            f"image {path} is corrupt or truncated ({len(data)} bytes); expected a complete "
            f"image file ({', '.join(IMAGE_SUFFIXES)})"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, palette: np.ndarray, fill: int = 255) -> np.ndarray:
    """uint8 (H, W) raw ids: index PNGs (mode P / L) keep their indices, RGB masks are decoded
    with `palette` (unknown colours -> fill)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                if not len(palette):
                    raise InputError(
                        f"mask {path} is an RGB image but the dataset has no palette; expected "
                        "an index mask (PNG mode P or L) or a palette in the data config"
                    )
                return rgb_to_index(np.asarray(im.convert("RGB")), palette, fill)
            mode, mask = im.mode, np.asarray(im)
    except OSError as err:  # PIL.UnidentifiedImageError included
        raise UnreadableFileError(
            f"mask {path} is corrupt or truncated ({err}); expected a complete lossless image "
            f"({', '.join(MASK_SUFFIXES)})"
        ) from None
    if mask.ndim != 2 or mask.max(initial=0) > 255:
        raise InputError(
            f"mask {path}: expected 8-bit class ids (PNG mode P or L) or an RGB palette mask, "
            f"got mode {mode} with shape {mask.shape} and max {mask.max()}"
        )
    return mask.astype(np.uint8)
