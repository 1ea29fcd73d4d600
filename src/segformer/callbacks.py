"""Lightning callbacks: a picture of predictions on a fixed set of validation images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image

from segformer.visualize import colorize, default_palette, denormalize, overlay, prediction_grid


class PredictionGrid(L.Callback):
    """After each validation, save image | ground truth | prediction for the first ``num_images``
    validation images (the same ones every time) to ``<run>/predictions/``, and send the grid and
    overlays to TensorBoard / wandb when those loggers are active."""

    def __init__(self, num_images: int = 6, max_side: int = 256) -> None:
        self.num_images = num_images
        self.max_side = max_side
        self._rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if (
            trainer.sanity_checking
            or not trainer.is_global_zero
            or not isinstance(outputs, torch.Tensor)
        ):
            return
        for image, mask, pred in zip(batch["image"], batch["mask"], outputs, strict=False):
            if len(self._rows) >= self.num_images:
                return
            stride = max(1, max(mask.shape) // self.max_side)  # keep the picture small
            self._rows.append(
                (
                    denormalize(image[:, ::stride, ::stride]),
                    mask[::stride, ::stride].cpu().numpy(),
                    pred[::stride, ::stride].cpu().numpy(),
                )
            )

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._rows:
            return
        datamodule = trainer.datamodule
        palette = getattr(datamodule, "palette", None)
        if palette is None:
            palette = default_palette(pl_module.hparams.num_classes)
        images, masks, preds = zip(*self._rows, strict=True)
        grid = prediction_grid(images, masks, preds, np.asarray(palette, np.uint8))
        out_dir = Path(trainer.default_root_dir) / "predictions"
        out_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(out_dir / f"val_step{trainer.global_step:06d}.png")
        Image.fromarray(grid).save(out_dir / "latest.png")
        overlays = [overlay(i, colorize(p, palette)) for i, p in zip(images, preds, strict=True)]
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    "val/predictions", grid, trainer.global_step, dataformats="HWC"
                )
            elif isinstance(logger, WandbLogger):
                logger.log_image("val/predictions", [grid], step=trainer.global_step)
                logger.log_image("val/overlays", list(overlays), step=trainer.global_step)
