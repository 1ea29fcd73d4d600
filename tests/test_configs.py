"""Every config composes, every experiment instantiates its data module and model for every
variant, and the variant table drives the per-variant settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import CONFIG_DIR, compose_config
from hydra.utils import instantiate

from segformer.eval import evaluate
from segformer.models import VARIANTS, SegFormer
from segformer.utils import build_module

EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
PAPER = ["ade20k", "cityscapes", "coco_stuff", "voc"]  # start from the ImageNet MiT weights


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config("train", [f"experiment={experiment}"], tmp_path)
    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    assert module.model.variant == cfg.model.variant
    assert module.model.num_classes == datamodule.num_classes
    assert cfg.run_name == f"{experiment}_{cfg.model.variant}"
    if experiment.startswith("synthetic"):
        datamodule.setup("fit")
        return
    # the data is not on this machine: the error names the missing root, not a deep traceback
    with pytest.raises(FileNotFoundError, match=str(Path(cfg.data.root))):
        datamodule.setup("fit")


@pytest.mark.parametrize("experiment", PAPER)
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_paper_experiment_for_every_variant(experiment: str, variant: str, tmp_path) -> None:
    cfg = compose_config(
        "train", [f"experiment={experiment}", f"model.variant={variant}"], tmp_path
    )
    assert cfg.run_name == f"{experiment}_{variant}"
    assert Path(cfg.model.pretrained) == tmp_path / "pretrained" / f"mit_{variant}.pth"
    side = 640 if (experiment, variant) == ("ade20k", "b5") else None
    if experiment == "ade20k":  # the paper's one per-variant difference: B5 at 640
        assert list(cfg.data.crop_size) == [side or 512] * 2
        assert list(cfg.data.scale) == list(cfg.data.eval.scale) == [2048, side or 512]
        assert list(cfg.inference.scale) == [2048, side or 512]
    kwargs = dict(cfg.model)
    assert kwargs["decoder_dim"] is None  # the variant's E, from the table
    instantiate(cfg.data)


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
    cfg = compose_config("train", ["experiment=ade20k", "model.variant=b2", *overrides], tmp_path)
    assert cfg.data.batch_size == per_device
    assert cfg.model.variant == "b2"


def test_global_batch_must_divide(tmp_path: Path) -> None:
    cfg = compose_config("train", ["experiment=cityscapes", "trainer.devices=3"], tmp_path)
    with pytest.raises(Exception, match="not divisible by 3"):
        _ = cfg.data.batch_size


@pytest.mark.parametrize(
    "group", ["trainer", "logger", "debug", "optimizer", "scheduler", "inference", "model"]
)
def test_every_option_of_a_group_composes(group: str, tmp_path: Path) -> None:
    for option in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
        cfg = compose_config("train", [f"{group}={option.stem}"], tmp_path)
        assert cfg.get(group) is not None or group == "debug"


@pytest.mark.parametrize("config", ["train", "eval", "predict"])
def test_one_inference_group_for_every_command(config: str, tmp_path: Path) -> None:
    extra = {"train": [], "eval": ["ckpt_path=x.ckpt"], "predict": ["ckpt_path=x", "input=x"]}
    cfg = compose_config(config, [*extra[config], "data=cityscapes"], tmp_path)
    assert cfg.inference.mode == "slide"  # the dataset's eval settings as defaults
    assert list(cfg.inference.stride) == [768, 768]
    cfg = compose_config(config, [*extra[config], "inference.flip=true"], tmp_path)
    assert cfg.inference.flip is True and cfg.inference.mode == "whole"


def test_model_group_builds_the_network_it_names(tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        ["model.variant=b1", "model.decoder_dim=128", "model.ln_eps_preset=hf"],
        tmp_path,
    )
    module = build_module(cfg, instantiate(cfg.data))
    assert module.model.variant == "b1" and module.model.head.decoder_dim == 128
    assert module.model.ln_eps_preset == "hf"
    assert module.hparams.optimizer["lr"] == cfg.optimizer.lr  # the groups reach the module


def test_eval_checks_the_network_overrides_and_refuses_the_others(tmp_path: Path) -> None:
    """The network comes from the checkpoint: model.variant / model.decoder_dim become checks
    (they were silently ignored once), other model.* keys are refused."""
    ckpt = tmp_path / "b0.pt"
    torch.save(SegFormer("b0", num_classes=6).state_dict(), ckpt)
    base = [f"ckpt_path={ckpt}", "data.num_workers=0", "trainer.limit_val_batches=1"]
    for overrides, match in [
        (["model.variant=b2"], "holds MiT-b0 weights, not b2"),
        (["experiment=cityscapes", "model.variant=b1"], "not b1"),
        (["model.decoder_dim=768"], "decoder_dim=768 requested, the checkpoint has 256"),
        (["model.head_lr_mult=1"], r"model\.head_lr_mult cannot change it"),
    ]:
        cfg = compose_config("eval", [*base, *overrides], tmp_path)
        with pytest.raises(ValueError, match=match):
            evaluate(cfg)
    # an experiment's run_name is for training: eval's run directory keeps the data name
    cfg = compose_config("eval", [*base, "experiment=cityscapes"], tmp_path)
    assert cfg.run_name == "cityscapes"
    cfg = compose_config("eval", [*base, "data.num_val=2", "model.variant=b0"], tmp_path)
    assert 0.0 <= evaluate(cfg)["mIoU"] <= 1.0
