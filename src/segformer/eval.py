"""segformer-eval: evaluate a checkpoint (any format from_pretrained reads) on a val/test split.

    segformer-eval ckpt_path=logs/train/synthetic_b0/<run>/checkpoints/last.ckpt
    segformer-eval experiment=cityscapes ckpt_path=segformer.b0.1024x1024.city.160k.pth \
        inference.mode=slide inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75,2.0] inference.flip=true

The network (variant, decoder width, classes) comes from the checkpoint. Writes metrics.json
and confusion_matrix.png into the run directory. An unreadable image or mask stops the command
(exit 1) with one line naming the file, before any result is written: a metric over part of a
split would pass for the whole (``segformer-check-data`` lists every bad file at once).
``data.val_batch_size`` > 1 works on images of mixed sizes (metrics as with batch size 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback, RichProgressBar
from omegaconf import DictConfig, OmegaConf

from segformer.build import instantiate_dict
from segformer.checkpoint_io import atomic_write
from segformer.cli import hydra_cli, print_config
from segformer.errors import InputError
from segformer.metrics import SUMMARY, per_class_results, save_confusion_matrix_png
from segformer.models import SegFormer
from segformer.module import SegFormerModule
from segformer.precision import cpu_class, resolve_precision
from segformer.resolvers import register_resolvers

register_resolvers()


# model.* keys a command line may give: checked against the checkpoint, not applied
CHECKED = {"model.variant": "variant", "model.decoder.decoder_dim": "decoder_dim"}


def network_checks(cfg: DictConfig) -> dict[str, Any]:
    """The network comes from the checkpoint. ``model.variant`` / ``model.decoder.decoder_dim``
    given on the command line become checks against it; any other ``model.*`` override (a
    training setting) is refused, not silently ignored. An experiment's model settings are not
    used."""
    if not HydraConfig.initialized():
        return {}
    given = [o.lstrip("+~") for o in HydraConfig.get().overrides.task]
    keys = [o.partition("=")[0] for o in given if o.startswith("model")]
    unusable = [k for k in keys if k not in CHECKED]
    if unusable:
        raise InputError(
            f"segformer-eval takes the network from ckpt_path; {', '.join(unusable)} cannot "
            f"change it (only {', '.join(CHECKED)} are checked against it)"
        )
    return {CHECKED[k]: OmegaConf.select(cfg, k) for k in keys}


def evaluate(cfg: DictConfig) -> dict[str, float]:
    checks = network_checks(cfg)
    if cfg.split not in ("val", "test"):
        raise InputError(f"split must be 'val' or 'test', got {cfg.split!r}")
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=output_dir, show=cfg.get("print_config", False))
    datamodule = instantiate(cfg.data)
    if cfg.get("threshold") is not None:  # a binary network's cut other than its own
        checks["threshold"] = cfg.threshold
    net = SegFormer.from_pretrained(cfg.ckpt_path, **checks)
    if net.label_classes != datamodule.num_classes:
        raise InputError(
            f"{cfg.ckpt_path}: the checkpoint predicts {net.label_classes} classes but data "
            f"'{type(datamodule).__name__}' has {datamodule.num_classes}"
        )
    if net.in_channels != datamodule.in_channels:
        raise InputError(
            f"{cfg.ckpt_path}: the checkpoint takes {net.in_channels} input channels but data "
            f"'{type(datamodule).__name__}' reads {datamodule.in_channels} (data.in_channels)"
        )
    module = SegFormerModule(
        num_classes=net.num_classes,
        net=net,
        in_channels=net.in_channels,
        class_names=datamodule.class_names,
        ignore_index=datamodule.ignore_index,
        inference=OmegaConf.to_container(cfg.inference, resolve=True),
        threshold=net.threshold,
    )
    precision, reason = resolve_precision(cfg.trainer.precision, str(cfg.trainer.accelerator))
    print(f"precision {precision}: {reason}")
    report = {
        "checkpoint": str(cfg.ckpt_path),
        "split": cfg.split,
        "inference": OmegaConf.to_container(cfg.inference, resolve=True),
        "precision": {"precision": precision, "reason": reason, "cpu_class": cpu_class()},
    }
    callbacks: list[Callback] = [RichProgressBar()]
    if not cfg.get("corruption"):
        callbacks.append(WriteReport(report, output_dir))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        precision=precision,
        callbacks=callbacks,
        logger=instantiate_dict(cfg.get("logger")) or False,
    )
    if cfg.get("corruption"):  # robustness to image corruptions (paper Table 5): robustness.py
        from segformer.robustness import evaluate_robustness

        summary = evaluate_robustness(cfg, trainer, module, datamodule, output_dir)
        return {"clean_mIoU": summary["clean"], "corrupted_mIoU": summary["mean"]}
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(module, datamodule=datamodule)
    # callback_metrics, not the module: under ddp_spawn the evaluating processes are others
    return {k: float(trainer.callback_metrics[f"{cfg.split}/{k}"]) for k in SUMMARY}


class WriteReport(Callback):
    """metrics.json and confusion_matrix.png, written by the process that holds the results
    (global rank 0: this one, or a spawned one under ddp_spawn)."""

    def __init__(self, report: dict[str, Any], output_dir: Path) -> None:
        self.report, self.output_dir = report, output_dir

    def on_validation_end(self, trainer: L.Trainer, module: SegFormerModule) -> None:
        self._write(trainer, module, "val")

    def on_test_end(self, trainer: L.Trainer, module: SegFormerModule) -> None:
        self._write(trainer, module, "test")

    def _write(self, trainer: L.Trainer, module: SegFormerModule, split: str) -> None:
        if not trainer.is_global_zero:
            return
        results = module.last_results[split]
        report = {
            **self.report,
            **{k: float(results[k]) for k in SUMMARY},
            "per_class": per_class_results(results, module.class_names),
        }
        atomic_write(self.output_dir / "metrics.json", json.dumps(report, indent=2), "metrics")
        save_confusion_matrix_png(
            results["confmat"], module.class_names, self.output_dir / "confusion_matrix.png"
        )


@hydra_cli("eval", config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
