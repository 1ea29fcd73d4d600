"""Lightning callbacks: a picture of predictions on a fixed set of validation images, the
learning curve (training loss and validation mIoU over steps), a step-based progress bar,
``last.ckpt`` kept at the newest state, and the guard that keeps a budgeted run in its time."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from PIL import Image

from segformer.budget import EXIT_SECONDS
from segformer.checkpoint_io import atomic_files, atomic_write, image_bytes
from segformer.data.labels import default_palette
from segformer.models.network import label_classes
from segformer.visualize import (
    denormalize,
    prediction_figure,
    resize_image,
    resize_nearest,
    spread_samples,
)


class PredictionGrid(L.Callback):
    """After each validation, a picture of ``num_images`` validation samples, the same ones at
    every validation: spread over the split (evenly over the sorted file list, one per group
    first when the data has groups, ``data.group`` / ``group_file``), in columns image | ground
    truth | prediction | errors (wrong pixels red, ignore pixels hatched), each row captioned
    with its file, group and share of wrong pixels, and a legend of the class colours and names
    (the classes in the shown samples when there are more than ``legend_max``). Saved to
    ``<run>/predictions/latest.png`` and ``val_step<step>.png``; sent to TensorBoard
    (``val/predictions``) and wandb (``val/predictions``, and ``val/samples``: the images with
    ground truth and prediction masks) when those loggers are active. The samples are taken
    from the validation batches as they pass (no extra pass over the split); with
    ``limit_val_batches`` they are chosen among the samples validated."""

    def __init__(self, num_images: int = 6, max_side: int = 256, legend_max: int = 12) -> None:
        self.num_images = num_images
        self.max_side = max_side
        self.legend_max = legend_max
        self.chosen: dict[int, str] = {}  # loader position -> caption (file and group)
        self._key: tuple | None = None  # what the choice was made for
        self._seen = 0
        self._rows: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, str]] = {}
        self.cells: list[list[tuple[int, int, int, int]]] = []  # the last picture's layout

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._rows, self._seen = {}, 0
        if not trainer.sanity_checking and trainer.is_global_zero:
            self._choose(trainer)

    def _choose(self, trainer: L.Trainer) -> None:
        """The positions in the loader's order of the samples to show (kept while the loader's
        dataset and length stay the same)."""
        loaders = trainer.val_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        dataset = getattr(loader, "dataset", None)
        if dataset is None:
            self.chosen = {}
            return
        sampler = getattr(loader, "sampler", None)
        try:
            order = list(sampler) if sampler is not None else list(range(len(dataset)))
        except TypeError:  # an iterable dataset: the first samples
            order = list(range(self.num_images))
        batches = trainer.num_val_batches[0] if trainer.num_val_batches else float("inf")
        batch_size = getattr(loader, "batch_size", None) or 1
        if batches != float("inf"):
            order = order[: int(batches) * batch_size]  # limit_val_batches
        key = (id(dataset), len(order))
        if key == self._key:
            return
        files = getattr(dataset, "samples", None)
        groups = None
        datamodule = getattr(trainer, "datamodule", None)
        if files is not None:
            keys = [str(files[i][0]) for i in order]
            if getattr(datamodule, "group", None) or getattr(datamodule, "group_file", None):
                groups = datamodule.groups([files[i] for i in order])
        else:
            keys = list(order)
        picked = spread_samples(keys, self.num_images, groups)
        self.chosen = {}
        for p in picked:
            caption = Path(files[order[p]][0]).name if files is not None else ""
            if groups is not None:
                caption += f" (group {groups[p]})"
            self.chosen[p] = caption
        self._key = key

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: dict[str, Any],
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or dataloader_idx != 0:
            return
        start = self._seen
        self._seen += len(batch["mask"])
        if not isinstance(outputs, torch.Tensor) or not any(
            start <= p < self._seen for p in self.chosen
        ):
            return
        # the data's normalisation (bands, bit depth), to show what the network saw
        image_format = getattr(trainer.datamodule, "image_format", None)
        mean, std = image_format.mean_std() if image_format is not None else (None, None)
        ignore_index = _ignore_index(trainer, pl_module)
        for i in range(len(batch["mask"])):
            if start + i not in self.chosen:
                continue
            image, mask, pred = batch["image"][i], batch["mask"][i], outputs[i]
            if "image_size" in batch:  # mixed sizes, padded (data/collate.py)
                (h, w), (mh, mw) = batch["image_size"][i].tolist(), batch["mask_size"][i].tolist()
                image, mask, pred = image[:, :h, :w], mask[:mh, :mw], pred[:mh, :mw]
            mask, pred = mask.cpu().numpy(), pred.cpu().numpy()
            valid = mask != ignore_index
            wrong = float(((pred != mask) & valid).sum() / max(1, valid.sum()))
            h, w = mask.shape
            scale = min(1.0, self.max_side / max(h, w))  # keep the picture small
            h, w = max(1, round(h * scale)), max(1, round(w * scale))
            names = batch.get("name")
            caption = self.chosen[start + i] or (str(names[i]) if names is not None else "")
            self._rows[start + i] = (
                resize_image(denormalize(image, mean, std), h, w),
                resize_nearest(mask, h, w),
                resize_nearest(pred, h, w),
                f"{caption}: {100 * wrong:.1f}% of pixels wrong",
            )

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not self._rows:
            return
        datamodule = trainer.datamodule
        palette = getattr(datamodule, "palette", None)
        num_classes = label_classes(pl_module.hparams.num_classes)  # binary: 2 classes, 1 output
        if palette is None:
            palette = default_palette(num_classes)
        palette = np.asarray(palette, np.uint8)
        names = getattr(pl_module, "class_names", None) or getattr(datamodule, "class_names", None)
        names = list(names or [str(k) for k in range(num_classes)])
        ignore_index = _ignore_index(trainer, pl_module)
        rows = [self._rows[p] for p in sorted(self._rows)]
        images, masks, preds, captions = (list(x) for x in zip(*rows, strict=True))
        picture, self.cells = prediction_figure(
            images,
            masks,
            preds,
            palette,
            names,
            ignore_index,
            captions,
            title=f"validation at step {trainer.global_step}",
            legend_max=self.legend_max,
        )
        out_dir = Path(trainer.default_root_dir) / "predictions"
        png = image_bytes(Image.fromarray(picture), "latest.png")
        pictures = {
            out_dir / f"val_step{trainer.global_step:06d}.png": png,
            out_dir / "latest.png": png,
        }
        atomic_files(pictures, "prediction picture")  # whole files, or one line saying why not
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    "val/predictions", picture, trainer.global_step, dataformats="HWC"
                )
            elif isinstance(logger, WandbLogger):
                labels = {k: name for k, name in enumerate(names)}
                labels[ignore_index] = "ignore"
                masks_arg = [
                    {
                        "predictions": {"mask_data": _mask_data(p), "class_labels": labels},
                        "ground_truth": {"mask_data": _mask_data(m), "class_labels": labels},
                    }
                    for m, p in zip(masks, preds, strict=True)
                ]
                logger.log_image("val/predictions", [picture], step=trainer.global_step)
                logger.log_image(
                    "val/samples",
                    images,
                    step=trainer.global_step,
                    masks=masks_arg,
                    caption=captions,
                )


def _ignore_index(trainer: L.Trainer, pl_module: L.LightningModule) -> int:
    hparams = getattr(pl_module, "hparams", None)
    value = getattr(hparams, "ignore_index", None)
    if value is None:
        value = getattr(getattr(trainer, "datamodule", None), "ignore_index", 255)
    return int(value)


def _mask_data(mask: np.ndarray) -> np.ndarray:
    """Class ids as wandb wants mask data: 2-D integers (uint8 when they fit)."""
    return mask.astype(np.uint8) if mask.max(initial=0) < 256 and mask.min(initial=0) >= 0 else mask


class LearningCurve(L.Callback):
    """Write ``<run>/learning_curve.png`` (training loss, smoothed, and validation mIoU over
    optimizer steps) and its numbers ``learning_curve.json`` after every validation. The history
    is kept in the checkpoint, so a resumed run continues the same curve."""

    def __init__(self, smooth: int = 50) -> None:
        self.smooth = smooth
        self.loss: list[tuple[int, float]] = []  # (step, training loss)
        self.val: list[tuple[int, float]] = []  # (step, val mIoU)

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):  # None for a skipped (non-finite) batch
            self.loss.append((trainer.global_step, float(loss.detach())))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # not on_validation_epoch_end: callbacks run that hook before the module logs val/mIoU
        miou = trainer.callback_metrics.get("val/mIoU")
        if trainer.sanity_checking or miou is None or not trainer.is_global_zero:
            return
        self.val.append((trainer.global_step, float(miou)))
        self.save(Path(trainer.default_root_dir))

    def save(self, out_dir: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt

        history = {"train_loss": self.loss, "val_mIoU": self.val}
        atomic_write(out_dir / "learning_curve.json", json.dumps(history), "learning curve")
        fig, ax_loss = plt.subplots(figsize=(8, 4.5), dpi=100)
        if self.loss:
            steps, loss = np.asarray(self.loss).T
            k = max(1, min(self.smooth, len(loss)))
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")  # running mean
            ax_loss.plot(steps, loss, color="tab:blue", alpha=0.2, linewidth=0.5)
            ax_loss.plot(
                steps[k - 1 :], smooth, color="tab:blue", label=f"train loss ({k}-step mean)"
            )
        ax_loss.set_xlabel("step")
        ax_loss.set_ylabel("train loss", color="tab:blue")
        ax_miou = ax_loss.twinx()
        if self.val:
            steps, miou = np.asarray(self.val).T
            ax_miou.plot(steps, miou, "o-", color="tab:red", label="val mIoU")
            ax_miou.annotate(
                f"{miou[-1]:.3f}",
                (steps[-1], miou[-1]),
                textcoords="offset points",
                xytext=(-10, 8),
            )
        ax_miou.set_ylabel("val mIoU", color="tab:red")
        ax_miou.set_ylim(0, 1)
        ax_loss.grid(alpha=0.3)
        fig.legend(loc="upper center", ncol=2, frameon=False)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
        picture = BytesIO()
        fig.savefig(picture, format="png")
        plt.close(fig)
        atomic_write(out_dir / "learning_curve.png", picture.getvalue(), "learning curve")

    def state_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "val": self.val}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.loss = [tuple(x) for x in state_dict["loss"]]
        self.val = [tuple(x) for x in state_dict["val"]]


class StepProgressBar(RichProgressBar):
    """The rich progress bar for iteration-based runs (``max_epochs=-1``): "Epoch 3" instead of
    Lightning's "Epoch 3/-2", and the optimizer step out of ``max_steps`` among the metrics."""

    def _get_train_description(self, current_epoch: int) -> str:
        if self.trainer.max_epochs not in (None, -1):
            return super()._get_train_description(current_epoch)
        # padded like Lightning's, so the bar does not jump when "Validation" replaces it
        return f"{f'Epoch {current_epoch}':{len(self.validation_description)}}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        if trainer.max_steps > 0:
            metrics["step"] = f"{trainer.global_step}/{trainer.max_steps}"
        return metrics


class LastCheckpoint(ModelCheckpoint):
    """``last.ckpt``: the newest training state, the one ``ckpt_path=last`` resumes. Written
    after every validation (so it holds that validation's results), every
    ``every_n_train_steps`` steps, and at the end of fit if the final step was not saved yet.

    ModelCheckpoint's own ``save_last`` writes ``last`` only at steps where it saves a top-k
    checkpoint: with ``monitor=val/mIoU`` that is the best step, not the newest; a second
    instance then writes ``last-v1.ckpt`` beside it. This is the one writer of ``last.ckpt``.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 0) -> None:
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps,
            enable_version_counter=False,  # overwrite last.ckpt, never last-v1.ckpt
        )

    def _fitting(self, trainer: L.Trainer) -> bool:
        # fast_dev_run too (unlike ModelCheckpoint's top-k): debug=fdr leaves a checkpoint to
        # try segformer-eval / -predict / -export on
        return trainer.state.fn == "fit" and not trainer.sanity_checking

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # also when the periodic save ran at this step: that one predates the validation
        if self._fitting(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._fitting(trainer) and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


class BudgetGuard(L.Callback):
    """Ends a budgeted run early when it would overrun ``budget.minutes``, with a validation
    and ``last.ckpt`` at the step it stops; ``ckpt_path=last`` then runs the rest of the plan.

    The plan comes from a calibration at start-up, so a machine that gets slower later (other
    work, throttling) would overrun it. After each step the time left must still hold one more
    step (the median of the last five: a checkpoint write between two is not a step) and, with
    a quarter to spare, a validation and the exit: the longest validation so far (checkpoint
    writes included) or the calibrated one slowed down as the steps are, whichever is longer
    (under a CPU hog on 2 AVX512 + AVX512-BF16 cores, steps ran 3.7x and a validation 5.5x
    their calibrated times).
    Otherwise the run stops there, and says where and why in ``run_plan["budget_stop"]`` (the
    run plan that checkpoints store).
    """

    SPARE = 1.25

    def __init__(self, run_plan: dict[str, Any], elapsed: Callable[[], float]) -> None:
        budget = run_plan["budget"]
        self.run_plan = run_plan
        self.seconds = float(budget["minutes"]) * 60.0
        self.planned_steps = int(budget["max_steps"])
        self.step_seconds = float(budget["step_seconds"])
        self.validation_seconds = float(budget["validation_seconds"])
        self.elapsed = elapsed
        self.recent: list[float] = []  # the last few steps, data loading included
        self.last_end: float | None = None
        self.validation_start: float | None = None
        self.longest_validation = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.validation_start = time.monotonic()

    def on_train_batch_start(self, *args: Any) -> None:
        if self.validation_start is not None:  # validation, pictures and checkpoints are done
            took = time.monotonic() - self.validation_start
            self.longest_validation = max(self.longest_validation, took)
            self.validation_start, self.last_end = None, None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        now = time.monotonic()
        if self.last_end is not None:
            self.recent = [*self.recent[-4:], now - self.last_end]
        self.last_end = now
        if trainer.global_step >= self.planned_steps or trainer.should_stop:
            return
        step = statistics.median(self.recent) if self.recent else self.step_seconds
        slowdown = max(1.0, step / self.step_seconds)
        validation = max(self.longest_validation, self.validation_seconds * slowdown)
        needed = step + self.SPARE * (validation + EXIT_SECONDS)
        left = self.seconds - self.elapsed()
        if left >= needed:
            return
        self.run_plan["budget_stop"] = {
            "step": trainer.global_step,
            "planned_steps": self.planned_steps,
            "step_seconds": round(step, 4),
            "calibrated_step_seconds": round(self.step_seconds, 4),
            "validation_seconds": round(validation, 2),
            "seconds_left": round(left, 1),
        }
        trainer.should_stop = True  # Lightning validates once more, then ends fit
        rank_zero_warn(
            f"budget: stopping at step {trainer.global_step} of {self.planned_steps} to end "
            f"within {self.seconds / 60:g} min: steps now take {step:.3f} s against "
            f"{self.step_seconds:.3f} s calibrated (a busier or slower machine); "
            "ckpt_path=last resumes the rest of the plan"
        )
