"""Every configs/data/*.yaml instantiates its datamodule with the paper's scales and eval keys."""

from pathlib import Path

import pytest
from helpers import compose_config
from hydra.utils import instantiate

from segformer.data.datamodule import SegmentationDataModule

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "data"
EXPECTED = {  # crop (h, w), eval mode
    "ade20k": ((512, 512), "whole"),
    "camvid": ((360, 360), "whole"),
    "coco_stuff": ((512, 512), "whole"),
    "cityscapes": ((1024, 1024), "slide"),
    "folder": ((512, 512), "whole"),
    "synthetic": ((128, 128), "whole"),
    "voc": ((512, 512), "whole"),
}


def test_every_config_is_covered():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_instantiates(name: str, tmp_path: Path):
    # composed as the entry points do: a dataset config builds on configs/data/base/
    cfg = compose_config("train", [f"data={name}", f"paths.data_dir={tmp_path}", "seed=7"])
    dm = instantiate(cfg.data)
    crop, mode = EXPECTED[name]
    assert isinstance(dm, SegmentationDataModule)
    assert dm.crop_size == crop and dm.eval_settings["mode"] == mode
    assert dm.seed == 7 and dm.ignore_index == cfg.data.ignore_index == 255
    if dm.root is not None:
        assert dm.root.is_relative_to(tmp_path)
