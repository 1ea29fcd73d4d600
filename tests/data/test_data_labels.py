"""data/labels.py: label maps and the default palette."""

import numpy as np

from segformer.data.labels import default_palette, make_label_map, reduce_zero_label_map


def test_label_maps():
    lut = make_label_map({11: 255})
    assert lut.dtype == np.uint8 and lut[11] == 255 and lut[3] == 3
    assert (make_label_map({7: 0}, default=255)[[7, 8]] == [0, 255]).all()
    assert reduce_zero_label_map()[[0, 1, 150, 255]].tolist() == [255, 0, 149, 255]


def test_default_palette_is_the_voc_colour_map():
    assert default_palette(4).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
