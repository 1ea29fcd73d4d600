"""segformer-train: fit a SegFormer with Lightning, configured by Hydra.

segformer-train                                  # B0 on the embedded synthetic data
segformer-train experiment=ade20k_b2 trainer=ddp trainer.devices=8 data.root=/data/ade
segformer-train experiment=synthetic_b0 ckpt_path=last   # resume the newest run in place
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
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


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit (and optionally test); returns the final logged metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=output_dir, show=cfg.get("print_config", True))

    datamodule = instantiate(cfg.data)
    module = build_module(cfg, datamodule)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is None and cfg.encoder.get("pretrained"):
        module.load_pretrained_encoder(cfg.encoder.pretrained)

    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=instantiate_dict(cfg.get("callbacks")),
        logger=instantiate_loggers(cfg.get("logger"), output_dir) or False,
    )
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    if cfg.get("train", True):
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if cfg.get("test", False):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        trainer.test(module, datamodule=datamodule, ckpt_path=best or None)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        ckpt = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        rank_zero_info(
            f"val/mIoU {metrics.get('val/mIoU', float('nan')):.4f} "
            f"(best {metrics.get('val/mIoU_best', float('nan')):.4f}) | run dir {output_dir}"
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
