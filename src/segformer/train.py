"""segformer-train: fit a SegFormer with Lightning, configured by Hydra.

segformer-train                                  # B0 on the embedded synthetic data
segformer-train experiment=ade20k model.variant=b2 trainer=ddp trainer.devices=8 data.root=/data/ade
segformer-train experiment=synthetic ckpt_path=last      # resume the newest run in place
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig, OmegaConf

from segformer.utils import (
    CONFIG_DIR,
    build_module,
    finish_wandb,
    instantiate_dict,
    instantiate_loggers,
    print_config,
    register_resolvers,
    step_based_trainer_kwargs,
)

register_resolvers()
# our train loaders resume by position (data/sampler.py), so Lightning's mid-epoch warning for
# loaders without state_dict does not apply
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """``last`` -> last.ckpt of this run directory (chosen by the run_dir resolver)."""
    if ckpt_path != "last":
        return ckpt_path
    return str(output_dir / "checkpoints" / "last.ckpt")


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if v.numel() == 1}


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test); returns the final logged metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=output_dir, show=cfg.get("print_config", True))

    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)

    callbacks = instantiate_dict(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar then
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    trainer: L.Trainer = instantiate(
        cfg.trainer,
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
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        rank_zero_info(
            f"val/mIoU {metrics.get('val/mIoU', float('nan')):.4f} "
            f"(best {metrics.get('val/mIoU_best', float('nan')):.4f})"
            + (f" | test/mIoU {metrics['test/mIoU']:.4f}" if "test/mIoU" in metrics else "")
            + f" | run dir {output_dir}"
            + (f" | checkpoint {ckpt}" if ckpt else "")
        )
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    try:
        metrics = train(cfg)
    finally:
        finish_wandb()  # each multirun job gets its own wandb run
    # the value a sweeper (Optuna) optimises
    return metrics.get(cfg.get("optimized_metric")) if cfg.get("optimized_metric") else None


if __name__ == "__main__":
    main()
