"""Composing the Hydra configs in tests the way the entry points do."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

import segformer.train as train_mod
from segformer.cli import CONFIG_DIR
from segformer.resolvers import register_resolvers

__all__ = [
    "CAMVID_ROOT",
    "CONFIG_DIR",
    "REPO_ROOT",
    "TINY",
    "compose_config",
    "compose_train",
    "with_callback",
    "write_lightning_checkpoint",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_ROOT = REPO_ROOT.parent / "shared" / "data" / "camvid"

# tiny settings that keep a real fit/validate loop to a few seconds on 2 CPU cores
TINY = [
    "experiment=synthetic",
    "data.num_train=16",
    "data.num_val=4",
    "data.image_size=64",
    "data.batch_size=4",
    "data.val_batch_size=4",
    "data.num_workers=0",
    "trainer.max_steps=2",
    "trainer.precision=32-true",
    "budget.minutes=null",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.num_sanity_val_steps=0",
    "trainer.enable_model_summary=false",
    "logger=csv",
    "print_config=false",
]


def compose_config(config_name: str, overrides: list[str], root: Path | None = None) -> DictConfig:
    """Compose like @hydra.main (hydra node included), resolve the run directory as Hydra would,
    and register the result as the current HydraConfig so ${hydra:...} interpolations work."""
    register_resolvers()
    GlobalHydra.instance().clear()
    extra = [f"paths.root_dir={root}"] if root is not None else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name, overrides=extra + overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(root or Path.cwd())
        cfg.hydra.job.num = 0
    # the run dir may use ${hydra:...} itself (a copy: set_config makes its argument read-only)
    HydraConfig.instance().set_config(copy.deepcopy(cfg))
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(cfg.hydra.run.dir)
    HydraConfig.instance().set_config(cfg)
    return cfg


def compose_train(root: Path, overrides: list[str] | None = None) -> DictConfig:
    return compose_config("train", TINY + list(overrides or []), root)


_instantiate_dict = train_mod.instantiate_dict


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: L.Callback) -> None:
    """Make train() run with one more callback (the config's callbacks stay as they are; a
    second call replaces the first one's callback)."""

    def patched(cfg):
        objs = _instantiate_dict(cfg)
        return [*objs, callback] if cfg is not None and "model_checkpoint" in cfg else objs

    monkeypatch.setattr(train_mod, "instantiate_dict", patched)


def write_lightning_checkpoint(path: Path, class_names: list[str], **settings: Any) -> Path:
    """A seeded, untrained checkpoint in Lightning's format (what segformer-train writes);
    ``settings``: other SegFormerModule arguments (num_classes=1: a binary network)."""
    from segformer.module import SegFormerModule

    torch.manual_seed(0)
    settings.setdefault("num_classes", len(class_names))
    module = SegFormerModule(class_names=class_names, **settings)
    checkpoint = {
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
    }
    torch.save(checkpoint, path)
    return path
