"""SegFormerModule: the LightningModule that trains and evaluates a SegFormer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import get_class
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console

from segformer.inference import InferenceConfig, predict_logits
from segformer.metrics import SegmentationMetrics, metrics_table
from segformer.models import SegFormer, upsample_cross_entropy
from segformer.models.convert import load_encoder_weights
from segformer.optim import param_groups


class SegFormerModule(L.LightningModule):
    """Cross-entropy training with the paper's optimiser groups and schedule, mIoU evaluation.

    Hyper-parameters are plain values and dicts (``optimizer``/``scheduler`` hold a ``_target_``),
    so checkpoints load with ``weights_only=True``.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "b0",
        decoder_dim: int | None = None,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        ln_eps: str = "official",
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        head_lr_mult: float = 10.0,
        no_decay_bias: bool = False,
        compile: bool = False,
        inference: dict[str, Any] | None = None,
        model: SegFormer | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"])
        # ``model`` lets eval/predict wrap weights loaded from any format
        self.model = model or SegFormer(
            variant=variant,
            num_classes=num_classes,
            decoder_dim=decoder_dim,
            drop_path_rate=drop_path_rate,
            dropout=dropout,
            ln_eps=ln_eps,
        )
        self.class_names = list(class_names or [str(i) for i in range(num_classes)])
        self.inference = InferenceConfig(
            **{k: v for k, v in (inference or {}).items() if v is not None}
        )
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index)
        self.best_miou = -math.inf
        self.last_results: dict[str, dict[str, torch.Tensor]] = {}

    def setup(self, stage: str) -> None:
        if self.hparams.compile and stage == "fit":
            self.model.compile()

    def load_pretrained_encoder(self, path: str) -> None:
        """Start the encoder from ImageNet MiT weights (official ``mit_bX.pth`` or transformers)."""
        load_encoder_weights(self.model.encoder, path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, K, H, W)."""
        return self.model(images)

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """CE of the H/4 logits upsampled (bilinear) to the label size, averaged over valid
        pixels, in fp32 even under mixed precision; computed in row bands so the full-resolution
        logits never exist (exactly F.cross_entropy(F.interpolate(...)))."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            return upsample_cross_entropy(logits.float(), masks, self.hparams.ignore_index)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = self.loss(self.model.forward_logits(batch["image"]), batch["mask"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics) -> torch.Tensor:
        masks = batch["mask"]
        logits = predict_logits(
            self.model, batch["image"], self.inference, out_size=masks.shape[-2:]
        )
        preds = logits.argmax(1)
        metrics.update(preds, masks)
        return preds

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.test_metrics)

    def on_validation_epoch_end(self) -> None:
        results = self._log_metrics("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            self.best_miou = max(self.best_miou, float(results["mIoU"]))
            self.log("val/mIoU_best", self.best_miou, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, split: str, metrics: SegmentationMetrics) -> dict[str, torch.Tensor]:
        results = metrics.compute()  # summed over processes (confusion-matrix state)
        metrics.reset()
        self.last_results[split] = results
        for key in ("mIoU", "mAcc", "aAcc"):
            self.log(f"{split}/{key}", results[key].item(), prog_bar=key == "mIoU")
        for name, iou in zip(self.class_names, results["IoU"].tolist(), strict=True):
            if not math.isnan(iou):
                self.log(f"{split}/IoU/{name}", iou)
        if not self.trainer.sanity_checking:
            self._report(split, results)
        return results

    @rank_zero_only
    def _report(self, split: str, results: dict[str, torch.Tensor]) -> None:
        """The per-class table on the terminal, and as a table in wandb."""
        title = f"{split} (step {self.global_step})"
        Console().print(metrics_table(results, self.class_names, title=title))
        rows = [
            [name, iou, acc]
            for name, iou, acc in zip(
                self.class_names, results["IoU"].tolist(), results["Acc"].tolist(), strict=True
            )
        ]
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(f"{split}/per_class", columns=["class", "IoU", "Acc"], data=rows)

    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = dict(self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 6e-5})
        groups = param_groups(
            self.model,
            lr=opt_cfg["lr"],
            weight_decay=opt_cfg.get("weight_decay", 0.0),
            head_lr_mult=self.hparams.head_lr_mult,
            no_decay_bias=self.hparams.no_decay_bias,
        )
        optimizer = get_class(opt_cfg.pop("_target_"))(groups, **opt_cfg)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        sched_cfg = dict(self.hparams.scheduler)
        scheduler = get_class(sched_cfg.pop("_target_"))(
            optimizer, total_steps=int(self.trainer.estimated_stepping_batches), **sched_cfg
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }
