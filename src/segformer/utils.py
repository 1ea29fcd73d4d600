"""Glue shared by the entry points: config resolvers, run directories, the rich config tree."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def latest_run_dir(base: str | Path) -> Path | None:
    """The newest run directory under ``base`` that holds ``checkpoints/last.ckpt``."""
    runs = sorted(Path(base).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parents[1] if runs else None


def _run_dir(base: str, stamp: str, ckpt_path: str | None) -> str:
    # ckpt_path=last continues the newest run of this run_name in place, not in a new directory
    if ckpt_path == "last":
        run = latest_run_dir(base)
        if run is None:
            raise FileNotFoundError(
                f"ckpt_path=last: no previous run with checkpoints/last.ckpt under {base}"
            )
        return str(run)
    return f"{base}/{stamp}"


def _per_process(global_batch: int, devices: Any, num_nodes: int = 1) -> int:
    # the paper gives global batches (16 for ADE20K, 8 for Cityscapes); split them over processes
    n = len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else devices
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"per_device: set trainer.devices to a count, got {devices!r}")
    world = n * int(num_nodes)
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
    return global_batch // world


def batch_split(
    global_batch: int, devices: Any, num_nodes: int = 1, max_per_device: int | None = None
) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) giving ``global_batch`` over the processes:
    the largest per-device batch <= ``max_per_device`` (None: no limit) that divides the
    per-process share, the rest made up by accumulating that many batches per step."""
    share = _per_process(global_batch, devices, num_nodes)
    if max_per_device is None or share <= int(max_per_device):
        return share, 1
    if int(max_per_device) < 1:
        raise ValueError(f"max_batch_per_device={max_per_device}; expected >= 1")
    batch = max(b for b in range(1, int(max_per_device) + 1) if share % b == 0)
    return batch, share // batch


def _per_device(
    global_batch: int, devices: Any, num_nodes: int = 1, max_per_device: int | None = None
) -> int:
    return batch_split(global_batch, devices, num_nodes, max_per_device)[0]


def _accumulate(
    global_batch: int, devices: Any, num_nodes: int = 1, max_per_device: int | None = None
) -> int:
    return batch_split(global_batch, devices, num_nodes, max_per_device)[1]


def _variant_field(variant: str, field: str) -> Any:
    # configs read the variant table, e.g. ${variant:${model.variant},imagenet_file}
    from segformer.models.variants import get_variant

    return getattr(get_variant(variant), field)


def register_resolvers() -> None:
    resolvers = {
        "run_dir": _run_dir,
        "per_device": _per_device,
        "accumulate": _accumulate,
        "variant": _variant_field,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


@rank_zero_only
def print_config(cfg: DictConfig, save_to: Path | None = None, show: bool = True) -> None:
    """Print the resolved config as a rich tree (top-level groups as branches) and save it."""
    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(f"[bold]{key}")
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    if show:
        Console().print(tree)
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        (save_to / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        with (save_to / "config_tree.log").open("w") as f:
            Console(file=f, width=120).print(tree)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a named group (callbacks, loggers)."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None, run_dir: Path) -> list[Any]:
    """Loggers of ``cfg.logger``. A wandb run without an explicit id gets one stored in the run
    directory (``wandb_id.txt``), so resuming that run directory continues the same wandb run."""
    from hydra.utils import instantiate

    loggers = []
    for c in (cfg or {}).values():
        if not (isinstance(c, DictConfig) and "_target_" in c):
            continue
        kwargs: dict[str, Any] = {}
        if c._target_.endswith("WandbLogger") and c.get("id") is None:
            id_file = run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            run_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
            kwargs = {"id": run_id, "resume": "allow"}
        loggers.append(instantiate(c, **kwargs))
    return loggers


def build_module(cfg: DictConfig, datamodule: Any, **overrides: Any) -> Any:
    """The LightningModule of ``cfg.model`` (default SegFormerModule) with the optimizer,
    scheduler and inference groups, and classes and ignore index taken from the data."""
    from hydra.utils import get_class

    from segformer.module import SegFormerModule

    kwargs = OmegaConf.to_container(cfg.get("model") or {}, resolve=True)
    cls = get_class(kwargs.pop("_target_")) if "_target_" in kwargs else SegFormerModule
    for group in ("optimizer", "scheduler", "inference"):
        if cfg.get(group) is not None:
            kwargs[group] = OmegaConf.to_container(cfg[group], resolve=True)
    kwargs.update(
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        ignore_index=datamodule.ignore_index,
    )
    image_format = getattr(datamodule, "image_format", None)
    if image_format is not None:  # how the data reads images: checked, and kept for predict
        if kwargs.get("in_channels", 3) != image_format.in_channels:
            raise ValueError(
                f"model.in_channels={kwargs.get('in_channels', 3)} but data.in_channels="
                f"{image_format.in_channels}: the model must take the bands the data gives"
            )
        kwargs["input_format"] = image_format.to_dict()
    kwargs.update(overrides)
    return cls(**kwargs)


def step_based_trainer_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """Trainer arguments that keep the configs' "optimizer steps" meaning under gradient
    accumulation: Lightning counts an int ``val_check_interval`` in training batches, so it is
    multiplied by ``accumulate_grad_batches`` (validation, and the checkpoint saved with it,
    then fall on step boundaries, where the resumable sampler's position is exact)."""
    accumulate = int(trainer_cfg.get("accumulate_grad_batches") or 1)
    interval = trainer_cfg.get("val_check_interval")
    if accumulate > 1 and isinstance(interval, int) and not isinstance(interval, bool):
        return {"val_check_interval": interval * accumulate}
    return {}


def finish_wandb() -> None:
    """Close an active wandb run (a no-op without wandb)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
