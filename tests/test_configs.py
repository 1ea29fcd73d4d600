"""Every config composes, and every experiment instantiates its data module and model."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import CONFIG_DIR, compose_config
from hydra.utils import instantiate

from segformer.utils import build_module

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    assert module.model.variant == cfg.encoder.variant
    assert module.model.num_classes == datamodule.num_classes
    assert cfg.run_name == experiment
    if experiment.startswith("synthetic"):
        datamodule.setup("fit")
        return
    # the data is not on this machine: the error names the missing root, not a deep traceback
    with pytest.raises(FileNotFoundError, match=str(Path(cfg.data.root))):
        datamodule.setup("fit")


@pytest.mark.parametrize(
    ("overrides", "per_device"),
    [
        (["trainer.devices=1"], 16),
        (["trainer=ddp", "trainer.devices=8"], 2),
        (["trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], 2),
    ],
)
def test_per_device_batch_follows_global_batch(
    overrides: list[str], per_device: int, tmp_path: Path
) -> None:
    cfg = compose_config("train", ["experiment=ade20k_b2", *overrides], tmp_path)
    assert cfg.data.batch_size == per_device
    assert cfg.encoder.variant == "b2"


def test_global_batch_must_divide(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=cityscapes_b0", "trainer.devices=3"], tmp_path)
    with pytest.raises(Exception, match="not divisible by 3"):
        _ = cfg.data.batch_size


@pytest.mark.parametrize("group", ["trainer", "logger", "debug", "optimizer", "scheduler"])
def test_every_option_of_a_group_composes(group: str, tmp_path: Path) -> None:
    for option in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
        cfg = compose_config("train", [f"{group}={option.stem}"], tmp_path)
        assert cfg.get(group) is not None or group == "debug"


def test_eval_config_composes(tmp_path: Path) -> None:
    cfg = compose_config("eval", ["ckpt_path=x.ckpt", "data=camvid"], tmp_path)
    assert cfg.split == "val"
    assert cfg.model.inference.mode == "whole"
