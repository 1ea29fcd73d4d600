"""segformer-train: fit a SegFormer with Lightning, configured by Hydra.

segformer-train                                  # B0 on the embedded synthetic data
segformer-train experiment=ade20k model.variant=b2 trainer=ddp trainer.devices=8 data.root=/data/ade
segformer-train experiment=synthetic ckpt_path=last      # resume the newest run in place
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from omegaconf import DictConfig, OmegaConf

from segformer.budget import (
    StepTimer,
    budget_clock,
    checkpoint_seconds,
    plan_budget,
    validation_seconds,
)
from segformer.build import (
    build_module,
    finish_wandb,
    instantiate_dict,
    instantiate_loggers,
    step_based_trainer_kwargs,
)
from segformer.callbacks import BudgetGuard, LastCheckpoint
from segformer.checkpoint_io import atomic_write
from segformer.cli import hydra_cli, print_config
from segformer.errors import InputError
from segformer.precision import cpu_class, cpu_info, resolve_precision, select_device
from segformer.resolvers import register_resolvers

register_resolvers()
# our train loaders resume by position (data/sampler.py), so Lightning's mid-epoch warning for
# loaders without state_dict does not apply
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` -> last.ckpt of this run directory (chosen by the run_dir resolver)."""
    if ckpt_path != "last":
        return ckpt_path
    return str(output_dir / "checkpoints" / "last.ckpt")


def plan_run(
    cfg: DictConfig,
    module: Any,
    datamodule: Any,
    ckpt_path: str | None,
    elapsed: Callable[[], float],
) -> dict[str, Any]:
    """Precision (``trainer.precision=auto``) and, with ``budget.minutes``, the step count and
    validation interval that fit the budget; a resumed run keeps the plan of its checkpoint."""
    stored = {}
    if ckpt_path is not None and Path(ckpt_path).is_file():
        stored = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get(
            "run_plan", {}
        )
    budget = cfg.get("budget") or {}
    accelerator, precision = str(cfg.trainer.accelerator), cfg.trainer.precision
    device = select_device(accelerator)
    if stored.get("precision") and str(precision) == "auto":
        precision, reason = stored["precision"], "the resumed run's"
        precision_reason = f"{stored.get('precision_reason', '')} ({reason})"
    else:
        precision_reason = None
    wants_budget = budget.get("minutes") and not stored.get("budget")
    if wants_budget and (cfg.trainer.devices not in (1, "1") or cfg.trainer.num_nodes != 1):
        raise InputError(
            "budget.minutes plans one device's run; with several devices or nodes set "
            "budget.minutes=null and trainer.max_steps=N"
        )
    # real steps on real batches, made only when something is measured
    timer = functools.cache(lambda: StepTimer(module, datamodule, device))
    with torch.random.fork_rng(devices=[] if device.type == "cpu" else None):
        if precision_reason is None:
            workload = (training_workload(cfg), lambda bf16: timer().step(bf16))
            precision, precision_reason = resolve_precision(precision, accelerator, workload)
        plan: dict[str, Any] = {"precision": precision, "precision_reason": precision_reason}
        if stored.get("budget"):
            plan.update(budget=stored["budget"], resumed=True)
        elif wants_budget:
            bf16 = precision.startswith("bf16")
            step = timer().steady_step(bf16)
            limit = cfg.trainer.get("limit_val_batches")
            val, per_batch = validation_seconds(module, datamodule, device, bf16, limit)
            every = OmegaConf.select(cfg, "callbacks.last_checkpoint.every_n_train_steps")
            plan["budget"] = plan_budget(
                minutes=float(budget.minutes),
                elapsed=elapsed(),
                step_seconds=step,
                validation_seconds=val,
                checkpoint_seconds=checkpoint_seconds(module),
                validations=int(budget.get("validations", 4)),
                max_steps=int(cfg.trainer.max_steps),
                checkpoint_every=every,
                sanity_seconds=per_batch * int(cfg.trainer.get("num_sanity_val_steps") or 0),
            ).as_dict()
    timer.cache_clear()  # its loader workers and model copy
    return plan


def training_workload(cfg: DictConfig) -> str:
    """Names what a training step's speed depends on, for precision.py's kept measurements:
    the model and data settings (loss and augmentation included), digested."""
    sections = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")}
    digest = hashlib.sha256(json.dumps(sections, sort_keys=True, default=str).encode())
    return (
        f"training steps of {cfg.model.get('variant')}, batch {cfg.data.get('batch_size')}, "
        f"model + data config {digest.hexdigest()[:12]}"
    )


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


@rank_zero_only
def _report_plan(plan: dict[str, Any], output_dir: Path) -> None:
    """Say how the run was fixed and why, and keep it with the machine in the run directory."""
    rank_zero_info(f"precision {plan['precision']}: {plan['precision_reason']}")
    if "budget" in plan:
        b = plan["budget"]
        rank_zero_info(
            f"budget {b['minutes']:g} min: {b['max_steps']} steps at {b['step_seconds']:.3f} s, "
            f"validation every {b['val_check_interval']} steps ({b['validation_seconds']:.1f} s "
            f"each), planned {b['calibrated_at_seconds']:.0f} s after start-up"
        )
    _write_plan(plan, output_dir)


def _write_plan(plan: dict[str, Any], output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    record = {**plan, "cpu_class": cpu_class(), "cpu": cpu_info()}
    atomic_write(output_dir / "run_plan.json", json.dumps(record, indent=2), "run plan")


def train(cfg: DictConfig, from_process_start: bool = False) -> dict[str, float]:
    """Fit (and optionally test); returns the final logged metrics. A time budget counts from
    the start of this call, or from the process start (``from_process_start``: the command)."""
    elapsed = budget_clock(from_process_start)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=output_dir, show=cfg.get("print_config", True))

    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)

    plan = plan_run(cfg, module, datamodule, ckpt_path, elapsed)
    module.run_plan = plan
    fixed: dict[str, Any] = {"precision": plan["precision"]}
    if "budget" in plan:
        fixed.update(
            max_steps=plan["budget"]["max_steps"],
            val_check_interval=plan["budget"]["val_check_interval"],
        )
    _report_plan(plan, output_dir)

    callbacks = instantiate_dict(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if "budget" in plan and not plan.get("resumed"):  # a resumed run's clock is not the plan's
        callbacks.append(BudgetGuard(plan, elapsed))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        **fixed,
        callbacks=callbacks,
        logger=instantiate_loggers(cfg.get("logger"), output_dir) or False,
        **step_based_trainer_kwargs(cfg.trainer),
    )
    for logger in trainer.loggers:  # the module logs none itself: the config once, resolved
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    metrics: dict[str, float] = {}
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics.update(_scalars(trainer.callback_metrics))
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
        # test replaces the callback metrics: keep the validation results beside its own
        metrics.update(_scalars(trainer.callback_metrics))

    if trainer.is_global_zero:
        if "budget_stop" in plan:
            _write_plan(plan, output_dir)
        text = json.dumps(metrics, indent=2, sort_keys=True)
        atomic_write(output_dir / "metrics.json", text, "metrics")
        ckpt = next(
            (c.last_model_path for c in trainer.callbacks if isinstance(c, LastCheckpoint)), ""
        )
        rank_zero_info(
            f"val/mIoU {metrics.get('val/mIoU', float('nan')):.4f} "
            f"(best {metrics.get('val/mIoU_best', float('nan')):.4f})"
            + (f" | test/mIoU {metrics['test/mIoU']:.4f}" if "test/mIoU" in metrics else "")
            + f" | run dir {output_dir}"
            + (f" | checkpoint {ckpt}" if ckpt else "")
        )
    return metrics


@hydra_cli("train", config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg, from_process_start=True)
    finally:
        finish_wandb()  # each multirun job gets its own wandb run
    # the value a sweeper (Optuna) optimises
    return metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    main()
