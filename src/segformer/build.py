"""Objects of a run built from its config: the LightningModule, callbacks, loggers, trainer
arguments."""

from __future__ import annotations

import inspect
import sys
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segformer.checkpoint_io import atomic_write
from segformer.errors import InputError


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
            atomic_write(id_file, run_id, "wandb run id")
            kwargs = {"id": run_id, "resume": "allow"}
        loggers.append(instantiate(c, **kwargs))
    return loggers


# network settings that moved into the encoder / decoder specs (older configs and overrides)
MOVED = {
    "decoder_dim": "model.decoder.decoder_dim",
    "dropout": "model.decoder.dropout",
    "drop_path_rate": "model.encoder.drop_path_rate",
    "ln_eps_preset": "model.encoder.ln_eps_preset",
}


def build_module(cfg: DictConfig, datamodule: Any, **overrides: Any) -> Any:
    """The LightningModule of ``cfg.model`` (default SegFormerModule): the network from the
    ``model.encoder`` / ``model.decoder`` specs, the optimizer, scheduler and inference groups,
    and classes, ignore index and input format taken from the data. ``model.variant`` is the
    configs' shorthand the default specs read, not a module argument. ``model.num_classes``:
    null = one output per data class, 1 = a binary network (one sigmoid output)."""
    from hydra.utils import get_class

    from segformer.module import SegFormerModule

    kwargs = OmegaConf.to_container(cfg.get("model") or {}, resolve=True)
    cls = get_class(kwargs.pop("_target_")) if "_target_" in kwargs else SegFormerModule
    kwargs.pop("variant", None)
    if "encoder" in kwargs or "decoder" in kwargs:
        kwargs["net"] = {
            "encoder": kwargs.pop("encoder", None),
            "decoder": kwargs.pop("decoder", None),
        }
    moved = [f"model.{k} is now {MOVED[k]}" for k in kwargs if k in MOVED]
    params = inspect.signature(cls).parameters
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [] if open_ended else sorted(set(kwargs) - set(params) - set(MOVED))
    if moved or unknown:
        raise InputError(
            "; ".join(moved + [f"model.{k} is not a setting of {cls.__name__}" for k in unknown])
        )
    for group in ("optimizer", "scheduler", "inference"):
        if cfg.get(group) is not None:
            kwargs[group] = OmegaConf.to_container(cfg[group], resolve=True)
    outputs = kwargs.pop("num_classes", None)
    if outputs not in (None, 1, datamodule.num_classes):
        raise InputError(
            f"model.num_classes={outputs}: null (one output per class, {datamodule.num_classes} "
            "for this data) or 1 (binary: one sigmoid output for 2 classes)"
        )
    kwargs.update(
        num_classes=outputs or datamodule.num_classes,
        class_names=list(datamodule.class_names),
        ignore_index=datamodule.ignore_index,
    )
    image_format = getattr(datamodule, "image_format", None)
    if image_format is not None:  # how the data reads images: checked, and kept for predict
        if kwargs.get("in_channels", 3) != image_format.in_channels:
            raise InputError(
                f"model.in_channels={kwargs.get('in_channels', 3)} but data.in_channels="
                f"{image_format.in_channels}: the model must take the bands the data gives"
            )
        kwargs["input_format"] = image_format.to_dict()
    kwargs.update(overrides)
    if isinstance(kwargs.get("class_weights"), str | dict):
        kwargs["class_weights"] = resolve_class_weights(cfg, datamodule, kwargs["class_weights"])
    return cls(**kwargs)


def resolve_class_weights(cfg: DictConfig, datamodule: Any, value: Any) -> list[float]:
    """``model.class_weights=auto`` (auto_sqrt, auto_enet, {rule, c}): the list counted from the
    training masks (data/class_weights.py, cached beside the data), printed as one line. A run
    resuming a checkpoint keeps the checkpoint's list (stored in its hyper-parameters)."""
    from lightning.pytorch.utilities import rank_zero_info

    from segformer.data.class_weights import auto_class_weights, parse_rule

    rule = parse_rule(value)  # an unknown rule fails here, before anything is read
    stored, ckpt = _checkpoint_class_weights(cfg)
    if stored is not None and len(stored) == datamodule.num_classes:
        named = ", ".join(
            f"{n}={w:.4f}" for n, w in zip(datamodule.class_names, stored, strict=True)
        )
        rank_zero_info(f"class weights ({rule}, from the resumed checkpoint {ckpt}): {named}")
        return stored
    resolved = auto_class_weights(value, datamodule)
    assert resolved is not None
    weights, line = resolved
    rank_zero_info(line)
    return weights


def _checkpoint_class_weights(cfg: DictConfig) -> tuple[list[float] | None, str | None]:
    """The class weights stored in the checkpoint the run resumes (``ckpt_path``), if any."""
    import torch

    ckpt = cfg.get("ckpt_path")
    if ckpt == "last":  # as train.resolve_ckpt_path
        output_dir = OmegaConf.select(cfg, "paths.output_dir")
        ckpt = output_dir and str(Path(output_dir) / "checkpoints" / "last.ckpt")
    if not ckpt or not Path(ckpt).is_file():
        return None, None
    try:
        hparams = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get(
            "hyper_parameters", {}
        )
    except (OSError, RuntimeError, ValueError):
        return None, None  # not a checkpoint we can read here: fit reports it
    stored = hparams.get("class_weights") if isinstance(hparams, dict) else None
    if isinstance(stored, list | tuple) and all(isinstance(w, int | float) for w in stored):
        return [float(w) for w in stored], ckpt
    return None, None


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

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
