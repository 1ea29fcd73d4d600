"""SegFormerModule: the LightningModule that trains and evaluates a SegFormer."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from rich.console import Console
from torch import nn

from segformer.checkpoint_io import atomic_write
from segformer.errors import InputError, NonFiniteLossError
from segformer.inference import InferenceConfig, predict_classes
from segformer.losses import build_loss
from segformer.metrics import PER_CLASS, SUMMARY, SegmentationMetrics, metrics_table
from segformer.models import EncoderDecoder, MixTransformer, segformer_net, upsample_cross_entropy
from segformer.models.convert import load_encoder_weights
from segformer.models.network import check_threshold, label_classes, locate
from segformer.optim import build_scheduler, fused_setting, param_groups


class SegFormerModule(L.LightningModule):
    """Training and evaluation of a segmentation network: the paper's cross-entropy (or
    ``loss`` terms), optimiser groups and schedule, mIoU evaluation.

    ``net``: the network's specs ``{"encoder": {_target_, ...}, "decoder": {_target_, ...}}``
    (``models.network``; None: the paper's MiT-B0 + all-MLP head), built here for ``num_classes``
    and ``in_channels`` and recorded in the checkpoint, or a built ``nn.Module`` (eval/predict
    wrap weights loaded from any format). Hyper-parameters are plain values and dicts, so
    checkpoints load with ``weights_only=True``.

    ``input_format``: the data's reading and normalisation (``data.channels.ImageFormat.to_dict``),
    kept for predict and export. ``loss``: None = the paper's cross-entropy, else
    ``losses.build_loss`` terms. ``scheduler``: a ``_target_`` (any ``torch.optim.lr_scheduler``
    class or ``optim.WarmupPolyLR``) plus ``interval`` (step | epoch | validation),
    ``frequency`` and ``monitor``. ``freeze_stages``: encoder stages not trained (-1 = all).

    ``num_classes``: the network's outputs, one per class; 1 is a binary network for data of two
    classes (background, foreground): one logit, trained with BCE (``loss``: bce and dice
    terms), foreground where its sigmoid exceeds ``threshold`` (recorded in the checkpoint), and
    the validation means (val/mIoU ...) are the foreground's (``SegmentationMetrics(binary)``).
    ``class_names`` and ``class_weights`` are then the two classes'.
    """

    def __init__(
        self,
        num_classes: int,
        net: Mapping[str, Any] | nn.Module | None = None,
        in_channels: int = 3,
        pretrained: str | None = None,
        freeze_stages: int = 0,
        compile: bool = False,
        class_names: Sequence[str] | None = None,
        ignore_index: int = 255,
        class_weights: Sequence[float] | None = None,
        loss: Any = None,
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        head_lr_mult: float = 10.0,
        no_decay_bias: bool = False,
        nonfinite_loss: str = "raise",
        inference: dict[str, Any] | None = None,
        input_format: dict[str, Any] | None = None,
        threshold: float = 0.5,
    ) -> None:
        super().__init__()
        built = isinstance(net, nn.Module)
        # not sent to the loggers: the entry points log the whole resolved config once
        self.save_hyperparameters(ignore=["net"] if built else None, logger=False)
        if built:
            self.model = net
        else:
            spec = dict(net) if net is not None else segformer_net("b0")
            self.model = EncoderDecoder(spec, num_classes, in_channels)
            self.model.check(max(64, self.model.min_input_size))
            self.hparams["net"] = self.model.net  # what was built: checkpoints rebuild it
        self.model.threshold = check_threshold(threshold)  # what predict and export apply
        binary = num_classes == 1
        classes = label_classes(num_classes)
        if input_format is not None and input_format.get("in_channels", 3) != in_channels:
            raise InputError(
                f"model.in_channels={in_channels} but the data gives "
                f"{input_format['in_channels']} channels (data.in_channels); set both alike"
            )
        if freeze_stages:
            if not hasattr(self.model.encoder, "freeze_stages"):
                raise InputError(
                    f"model.freeze_stages={freeze_stages}: the encoder "
                    f"{type(self.model.encoder).__name__} has no freeze_stages(k) method"
                )
            self.model.encoder.freeze_stages(freeze_stages)
        # None: the default loss path below, exactly the paper's cross-entropy; binary: BCE
        if binary:
            self.criterion = build_loss("bce" if loss is None else loss, binary=True)
        else:
            self.criterion = None if loss is None else build_loss(loss)
        self.class_names = list(class_names or [str(i) for i in range(classes)])
        if binary and len(self.class_names) != 2:
            raise InputError(
                f"model.num_classes=1 (binary: one sigmoid output) needs data of 2 classes "
                f"(background, foreground); the data has {len(self.class_names)}: "
                f"{', '.join(self.class_names)}"
            )
        if class_weights is not None and len(class_weights) != classes:
            raise InputError(
                f"model.class_weights has {len(class_weights)} values, expected one per class "
                f"({classes} classes)"
            )
        weight = None if class_weights is None else torch.tensor(class_weights).float()
        self.register_buffer("class_weight", weight, persistent=False)  # (K,) or None
        if nonfinite_loss not in ("raise", "skip"):
            raise InputError(
                f"model.nonfinite_loss must be 'raise' or 'skip', got {nonfinite_loss!r}"
            )
        self.nonfinite_skipped = 0  # batches skipped for a NaN/inf loss (kept in checkpoints)
        # batches without a labelled pixel (loss 0, see _count_void): this process's since the
        # start or resume, and the sum over processes before it (kept in checkpoints)
        self.void_batches = 0
        self._void_batches_before = 0
        self._nonfinite_in_a_row = 0
        self._resume_rng: dict[str, Any] | None = None
        self.inference = InferenceConfig(
            **{k: v for k, v in (inference or {}).items() if v is not None}
        )
        self.val_metrics = SegmentationMetrics(classes, ignore_index, binary=binary)
        self.test_metrics = SegmentationMetrics(classes, ignore_index, binary=binary)
        self.best_miou = -math.inf
        self.run_plan: dict[str, Any] | None = None  # set by segformer-train (train.plan_run)
        # (scheduler, monitor) of a scheduler with interval "validation", and its resumed state
        self.validation_scheduler: tuple[Any, str | None] | None = None
        self._validation_scheduler_state: dict[str, Any] | None = None
        self.last_results: dict[str, dict[str, torch.Tensor]] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, K, H, W)."""
        return self.model(images)

    def loss(self, logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """CE of the H/4 logits upsampled (bilinear) to the label size, averaged over valid
        pixels (weighted by ``class_weights`` when given), in fp32 even under mixed precision:
        exactly F.cross_entropy(F.interpolate(...), weight=class_weights), but 0 (with zero
        gradients) for a batch without a labelled pixel (models/valid_pixels.py). On the CPU it
        runs in row bands, so the full-resolution logits never exist there; on other devices
        ATen's fused interpolate + cross-entropy are faster (see ``models/upsample.py``).
        With ``model.loss`` set (or a binary network: BCE), the weighted terms of
        ``losses.build_loss`` instead."""
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.criterion is not None:
                return self.criterion(
                    logits.float(), masks, self.hparams.ignore_index, self.class_weight
                )
            return upsample_cross_entropy(
                logits.float(), masks, self.hparams.ignore_index, self.class_weight
            )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        # with skipping on, keep the buffers: a NaN batch would poison BatchNorm running stats
        # in the forward pass already (a few KB: only the decoder has BatchNorm)
        skip = self.hparams.nonfinite_loss == "skip"
        buffers = [(b, b.clone()) for b in self.model.buffers()] if skip else []
        loss = self.loss(self.model.forward_logits(batch["image"]), batch["mask"])
        if not torch.isfinite(loss):
            for buffer, saved in buffers:
                buffer.copy_(saved)
            return self._nonfinite(loss, batch)
        self._nonfinite_in_a_row = 0
        self._count_void(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        if self.criterion is not None and len(self.criterion.terms) > 1:
            for name, value in self.criterion.last.items():  # each term of a combined loss
                self.log(f"train/loss_{name}", value, batch_size=batch["image"].shape[0])
        return loss

    def _count_void(self, batch: dict[str, Any]) -> None:
        """A batch whose pixels are all ignore_index (void-only crops, unlabelled images) is
        valid data, not an error: its loss is 0 with zero gradients, still in the graph, so the
        step (and a DDP all-reduce) runs as usual. Counted and logged; the first one printed.
        Checked after the loss, whose finiteness check has synchronised already."""
        if (batch["mask"] != self.hparams.ignore_index).any():
            return
        self.void_batches += 1
        if self.void_batches == 1:
            names = ", ".join(batch["name"][:4]) + (", ..." if len(batch["name"]) > 4 else "")
            self.print(
                f"step {self.global_step}: every pixel of the batch ({names}) is ignore_index "
                f"{self.hparams.ignore_index}: loss 0; such batches count as train/void_batches"
            )
        # this process's view; the checkpoint holds the sum over processes
        self.log("train/void_batches", float(self._void_batches_before + self.void_batches))

    def _nonfinite(self, loss: torch.Tensor, batch: dict[str, Any]) -> None:
        """A NaN/inf loss never trains the model: stop with the batch named, or (policy
        ``skip``) skip the optimizer step and count it, stopping after 10 in a row (then the
        weights themselves are broken)."""
        self._nonfinite_in_a_row += 1
        names = ", ".join(batch["name"][:4]) + (", ..." if len(batch["name"]) > 4 else "")
        what = f"training loss is {loss.item()} at step {self.global_step} (batch: {names})"
        image = batch["image"]
        bad_input = not bool(torch.isfinite(image).all())
        if bad_input:  # the cause is in the data, not in the optimisation
            per_image = (~torch.isfinite(image)).flatten(1).sum(1).tolist()
            bad = [(n, k) for n, k in zip(batch["name"], per_image, strict=True) if k]
            files = ", ".join(f"{n} ({int(k):,} values)" for n, k in bad[:4])
            files += f" and {len(bad) - 4} more" if len(bad) > 4 else ""
            what += (
                f"; the input itself holds non-finite values (NaN/inf) in {files}: set "
                "data.nodata=nan (or the no-data value) to ignore such pixels, or fix the files"
            )
        if self.hparams.nonfinite_loss == "raise" or self._nonfinite_in_a_row > 10:
            advice = (
                ""
                if bad_input
                else " Lower optimizer.lr, set trainer.gradient_clip_val, train in fp32 or "
                "bf16 rather than fp16, or set model.nonfinite_loss=skip to skip such batches"
            )
            raise NonFiniteLossError(
                f"{what}; {self._nonfinite_in_a_row} in a row, {self.nonfinite_skipped} skipped "
                f"before.{advice}"
            )
        self.nonfinite_skipped += 1
        self.print(f"skipped: {what}")
        self.log("train/nonfinite_skipped", float(self.nonfinite_skipped))
        return None  # Lightning skips the backward pass and the optimizer step

    def on_fit_start(self) -> None:
        # ImageNet weights start a new run only (ckpt_path is set once a checkpoint is restored)
        path = self.hparams.pretrained
        if not path or self.trainer.ckpt_path is not None:
            return
        encoder = self.model.encoder
        if isinstance(encoder, MixTransformer):
            load_encoder_weights(encoder, path)
        elif hasattr(encoder, "load_pretrained"):
            encoder.load_pretrained(path)
        else:
            raise InputError(
                f"model.pretrained={path}: the encoder {type(encoder).__name__} has no "
                "load_pretrained(path) method (MiT encoders read every supported format)"
            )

    def setup(self, stage: str) -> None:
        if getattr(self.model.encoder, "frozen_stages", 0):
            # frozen stages are in eval mode on purpose (no drop path): Lightning's notice of
            # "modules in eval mode at the start of training" is expected then
            warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        if self.hparams.compile and stage == "fit":
            self.model.compile()
        if self.hparams.nonfinite_loss == "skip" and self.trainer.world_size > 1:
            # one process skipping its step while the others all-reduce gradients would hang
            raise InputError("model.nonfinite_loss=skip works in one process only; use 'raise'")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the RNG state that dropout / drop path draw from next: a resumed run continues it
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_state"] = rng
        checkpoint["nonfinite_skipped"] = self.nonfinite_skipped
        checkpoint["void_batches"] = self._total_void_batches()
        checkpoint["best_miou"] = self.best_miou
        if self.validation_scheduler is not None:  # Lightning keeps only the ones it steps
            checkpoint["validation_scheduler"] = self.validation_scheduler[0].state_dict()
        if self.run_plan is not None:  # precision and budgeted steps: a resume keeps them
            checkpoint["run_plan"] = self.run_plan

    def _total_void_batches(self) -> int:
        """Void batches of the whole run, summed over processes: every process saves (Lightning
        dumps the checkpoint on all ranks, rank 0 writes it), so the reduce is collective."""
        local = torch.tensor(float(self.void_batches), device=self.device)
        if self._trainer is not None and self.trainer.world_size > 1:
            local = self.trainer.strategy.reduce(local, reduce_op="sum")
        return self._void_batches_before + int(local.item())

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_network(checkpoint)
        self._void_batches_before, self.void_batches = checkpoint.get("void_batches", 0), 0
        self._resume_rng = checkpoint.get("rng_state")
        self._validation_scheduler_state = checkpoint.get("validation_scheduler")
        self.nonfinite_skipped = checkpoint.get("nonfinite_skipped", 0)
        # the best validation mIoU of the whole run, not only of the resumed part
        self.best_miou = checkpoint.get("best_miou", -math.inf)

    def _check_network(self, checkpoint: dict[str, Any]) -> None:
        """Resuming (or testing) a checkpoint of another network: one line naming what differs,
        before Lightning's state-dict size-mismatch dump. Runs before the weights are loaded."""
        state = {
            k.removeprefix("model."): v
            for k, v in checkpoint.get("state_dict", {}).items()
            if k.startswith("model.")
        }
        own = self.model.state_dict()
        differ = sorted(
            k
            for k in own.keys() | state.keys()
            if k not in own or k not in state or own[k].shape != state[k].shape
        )
        if not differ:
            return
        hparams = checkpoint.get("hyper_parameters", {})
        net = hparams.get("net") or {}
        theirs = _summary(state, net.get("encoder", {}).get("variant", hparams.get("variant")))
        ours = _summary(own, self.model.variant)
        both = [
            f"{k}={theirs[k]} in the checkpoint but {ours[k]} in the config"
            for k in ours
            if theirs[k] is not None and theirs[k] != ours[k]
        ]
        if not both:  # another composition: name a weight that differs
            k = differ[0]
            shape = {
                n: tuple(d[k].shape) if k in d else "absent" for n, d in (("c", state), ("o", own))
            }
            both = [f"weight {k} is {shape['c']} in the checkpoint but {shape['o']} in the config"]
        path = getattr(self._trainer, "ckpt_path", None) or "the checkpoint"
        raise InputError(
            f"{path}: {', '.join(both)}; resume with the run's own data and model settings, or "
            "start a new run (ckpt_path=null) to train another network"
        )

    def on_train_start(self) -> None:
        # restored here, after the sanity validation, right before the first training batch
        if self._resume_rng is not None:
            torch.set_rng_state(self._resume_rng["torch"])
            if "cuda" in self._resume_rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(self._resume_rng["cuda"])
            self._resume_rng = None

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics) -> torch.Tensor:
        if "image_size" in batch:  # samples of different sizes, padded by data/collate.py
            return self._eval_mixed(batch, metrics)
        masks = batch["mask"]
        preds = predict_classes(self.model, batch["image"], self.inference, masks.shape[-2:])
        metrics.update(preds, masks)
        return preds

    def _eval_mixed(self, batch: dict[str, Any], metrics: SegmentationMetrics) -> torch.Tensor:
        """A padded batch of mixed sizes: each image runs at its own size (with those of the same
        size), never with padding, so the metrics equal those of batch size 1. Returns the
        padded class maps, ignore_index outside each image."""
        preds = torch.full_like(batch["mask"], self.hparams.ignore_index)
        sizes = torch.cat([batch["image_size"], batch["mask_size"]], 1).tolist()
        for size in dict.fromkeys(map(tuple, sizes)):
            (h, w), (mh, mw) = size[:2], size[2:]
            index = torch.tensor([i for i, s in enumerate(sizes) if tuple(s) == size])
            index = index.to(preds.device)
            masks = batch["mask"][index, :mh, :mw]
            images = batch["image"][index, :, :h, :w]
            preds[index, :mh, :mw] = predict_classes(self.model, images, self.inference, (mh, mw))
            metrics.update(preds[index, :mh, :mw], masks)
        return preds

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.val_metrics)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._eval_step(batch, self.test_metrics)

    def on_validation_epoch_start(self) -> None:
        # fresh state tensors: ddp_spawn hands every process the metric state in one shared
        # memory block, where their updates would add up before the cross-process sum
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        results = self._log_metrics("val", self.val_metrics)
        if not self.trainer.sanity_checking:
            self.best_miou = max(self.best_miou, float(results["mIoU"]))
            self._step_validation_scheduler(results)
            self.log("val/mIoU_best", self.best_miou, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test", self.test_metrics)

    def _log_metrics(self, split: str, metrics: SegmentationMetrics) -> dict[str, torch.Tensor]:
        results = metrics.compute()  # summed over processes (confusion-matrix state)
        metrics.reset()
        self.last_results[split] = results
        for key in SUMMARY:
            self.log(f"{split}/{key}", results[key].item(), prog_bar=key == "mIoU")
        for name, iou in zip(self.class_names, results["IoU"].tolist(), strict=True):
            if not math.isnan(iou):
                self.log(f"{split}/IoU/{name}", iou)
        if not self.trainer.sanity_checking:
            self._report(split, results)
        return results

    @rank_zero_only
    def _report(self, split: str, results: dict[str, torch.Tensor]) -> None:
        """The per-class table on the terminal, in ``<run>/<split>_per_class.txt`` and as a table
        in wandb."""
        title = f"{split} (step {self.global_step})"
        console = Console(record=True)
        binary = self.hparams.num_classes == 1
        mean_label = "mean (fg)" if binary else "mean"
        console.print(metrics_table(results, self.class_names, title, mean_label))
        if self._trainer is not None:
            out = Path(self.trainer.default_root_dir) / f"{split}_per_class.txt"
            atomic_write(out, console.export_text(), "per-class table")
        columns = list(PER_CLASS)
        values = [results[k].tolist() for k in columns]
        rows = [[name, *(v[i] for v in values)] for i, name in enumerate(self.class_names)]
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(f"{split}/per_class", columns=["class", *columns], data=rows)

    def configure_optimizers(self) -> dict[str, Any]:
        opt_cfg = dict(self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "lr": 6e-5})
        groups = param_groups(
            self.model,
            lr=opt_cfg["lr"],
            weight_decay=opt_cfg.get("weight_decay", 0.0),
            head_lr_mult=self.hparams.head_lr_mult,
            no_decay_bias=self.hparams.no_decay_bias,
        )
        factory = locate(opt_cfg.pop("_target_"), "optimizer")
        trainer = self._trainer
        fp16_clipping = (
            trainer is not None
            and trainer.precision == "16-mixed"
            and bool(trainer.gradient_clip_val)
        )
        optimizer = factory(groups, **fused_setting(factory, opt_cfg, fp16_clipping))
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        scheduler, settings = build_scheduler(
            self.hparams.scheduler, optimizer, int(self.trainer.estimated_stepping_batches)
        )
        if settings["interval"] == "validation":  # stepped by on_validation_epoch_end
            self.validation_scheduler = (scheduler, settings.get("monitor"))
            if self._validation_scheduler_state is not None:  # resumed
                scheduler.load_state_dict(self._validation_scheduler_state)
            return {"optimizer": optimizer}
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, **settings}}

    def _step_validation_scheduler(self, results: dict[str, torch.Tensor]) -> None:
        """A scheduler of interval ``validation`` steps after each validation, with the
        monitored value (``val/mIoU`` ...) when it takes one (ReduceLROnPlateau)."""
        if self.validation_scheduler is None:
            return
        scheduler, monitor = self.validation_scheduler
        if monitor is None:
            scheduler.step()
            return
        key = monitor.removeprefix("val/")
        if key not in results:
            raise InputError(
                f"scheduler.monitor={monitor}: not a validation metric; one of "
                + ", ".join(f"val/{k}" for k in SUMMARY)
            )
        scheduler.step(float(results[key]))


def _summary(state: Mapping[str, torch.Tensor], variant: str | None) -> dict[str, Any]:
    """What a network's weights say of it, where the paper's layout tells: the MiT variant,
    the classes and the decoder width (None when unknown)."""
    classifier = state.get("head.classifier.weight")  # (K, E, 1, 1)
    return {
        "variant": variant,
        "num_classes": None if classifier is None else classifier.shape[0],
        "decoder_dim": None if classifier is None else classifier.shape[1],
    }
