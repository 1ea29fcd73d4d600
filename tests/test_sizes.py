"""sizes.pair: the one int-or-two-ints helper of the data modules and InferenceConfig."""

import pytest
from omegaconf import OmegaConf

from segformer.sizes import pair


def test_pair_accepts_an_int_or_two_ints():
    assert pair(512) == (512, 512)
    assert pair((384, 512)) == (384, 512)
    assert pair(OmegaConf.create([2048, 512])) == (2048, 512)  # Hydra's ListConfig


def test_pair_names_the_setting_in_its_error():
    with pytest.raises(ValueError, match=r"crop_size=\[1, 2, 3\]; expected an int or two ints"):
        pair([1, 2, 3], "crop_size")
