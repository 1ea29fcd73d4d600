"""segformer-eval: evaluate a checkpoint (any format from_pretrained reads) on a val/test split.

    segformer-eval ckpt_path=logs/train/synthetic_b0/<run>/checkpoints/last.ckpt
    segformer-eval experiment=cityscapes_b0 ckpt_path=segformer.b0.1024x1024.city.160k.pth \
        model.inference.mode=slide model.inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75,2.0] \
        model.inference.flip=true

Writes metrics.json and confusion_matrix.png into the run directory.
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import RichProgressBar
from omegaconf import DictConfig, OmegaConf

from segformer.metrics import save_confusion_matrix_png
from segformer.models import SegFormer
from segformer.utils import (
    CONFIG_DIR,
    build_module,
    instantiate_dict,
    print_config,
    register_resolvers,
)

register_resolvers()


def evaluate(cfg: DictConfig) -> dict[str, float]:
    if cfg.split not in ("val", "test"):
        raise ValueError(f"split must be 'val' or 'test', got {cfg.split!r}")
    output_dir = Path(cfg.paths.output_dir)
    print_config(cfg, save_to=output_dir, show=cfg.get("print_config", False))
    datamodule = instantiate(cfg.data)
    net = SegFormer.from_pretrained(cfg.ckpt_path)
    if net.num_classes != datamodule.num_classes:
        raise ValueError(
            f"{cfg.ckpt_path}: the checkpoint predicts {net.num_classes} classes but data "
            f"'{type(datamodule).__name__}' has {datamodule.num_classes}"
        )
    module = build_module(cfg, datamodule, variant=net.variant, model=net)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=[RichProgressBar()],
        logger=instantiate_dict(cfg.get("logger")) or False,
    )
    if cfg.get("corruption"):  # robustness to image corruptions (paper Table 5): robustness.py
        from segformer.robustness import evaluate_robustness

        report = evaluate_robustness(cfg, trainer, module, datamodule, output_dir)
        return {"clean_mIoU": report["clean"], "corrupted_mIoU": report["mean"]}
    run = trainer.validate if cfg.split == "val" else trainer.test
    run(module, datamodule=datamodule)

    results = module.last_results[cfg.split]
    metrics = {k: float(results[k]) for k in ("mIoU", "mAcc", "aAcc")}
    if trainer.is_global_zero:
        per_class = {
            name: {"IoU": float(iou), "Acc": float(acc)}
            for name, iou, acc in zip(
                module.class_names, results["IoU"], results["Acc"], strict=True
            )
        }
        report = {
            "checkpoint": str(cfg.ckpt_path),
            "split": cfg.split,
            "inference": OmegaConf.to_container(cfg.model.inference, resolve=True),
            **metrics,
            "per_class": per_class,
        }
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        save_confusion_matrix_png(
            results["confmat"], module.class_names, output_dir / "confusion_matrix.png"
        )
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
