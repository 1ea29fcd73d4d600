"""data/reading.py: masks decoded to class ids, bad masks refused by name."""

from pathlib import Path

import numpy as np
import pytest
from datafiles import FOLDER_PALETTE, raw_mask
from PIL import Image

from segformer.data.labels import rgb_to_index
from segformer.data.reading import read_mask


def test_rgb_masks_decode_with_the_palette(tmp_path: Path):
    ids = raw_mask([0, 1, 2])
    rgb = FOLDER_PALETTE[ids]
    rgb[0, 0] = (1, 2, 3)  # a colour outside the palette
    assert rgb_to_index(rgb, FOLDER_PALETTE, 255)[0, 0] == 255
    np.testing.assert_array_equal(rgb_to_index(rgb, FOLDER_PALETTE, 255)[1:], ids[1:])
    path = tmp_path / "m.png"
    Image.fromarray(rgb).save(path)
    np.testing.assert_array_equal(read_mask(path, FOLDER_PALETTE)[1:], ids[1:])


def test_sixteen_bit_masks_beyond_uint8_are_rejected(tmp_path: Path):
    path = tmp_path / "m.png"
    Image.fromarray(np.full((4, 4), 300, np.uint16)).save(path)
    with pytest.raises(ValueError, match=r"m\.png"):
        read_mask(path, FOLDER_PALETTE)
