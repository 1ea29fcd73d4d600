"""Your own data through the entry points: a couple of training steps on each input kind as
people have it on disk (16-bit and 4-band TIFF, grayscale JPEG, RGBA PNG, 0/255 masks with a
label map, mmseg's layout), then predict / export / eval of a 4-band checkpoint; gradient
accumulation for the paper's global batch on fewer devices."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import TINY, compose_config, with_callback
from hydra.utils import instantiate
from owndata import class_mask, folder_overrides, image_for, make_folder, write_image, write_mask
from PIL import Image

import segformer.train as train_mod
from segformer.build import build_module
from segformer.eval import evaluate
from segformer.export import export
from segformer.models import SegFormer
from segformer.predict import predict

# trainer and output settings of the tiny runs (TINY's data.* keys are the synthetic data's)
RUN = [o for o in TINY if not o.startswith("data.")]


def _mmseg(root: Path) -> Path:
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            mask = class_mask(i + 10 * (split == "val"))
            write_image(root / "img_dir" / split / f"x{i}.jpg", image_for(mask, "rgb", i))
            write_mask(root / "ann_dir" / split / f"x{i}_mask.png", mask)
    return root


# input kind -> (dataset writer, extra overrides); each also exercises one fine-tuning knob
KINDS = {
    "tiff16_one_band": (
        lambda root: make_folder(root, "tiff16"),
        ["data.in_channels=1", "data.max_value=65535", "model.freeze_stages=-1"],
    ),
    "tiff_four_bands": (
        lambda root: make_folder(root, "tiff4", planar=True),
        [
            "data.in_channels=4",
            "data.mean=[32768,32768,32768,30000]",
            "data.std=[18900,18900,18900,12000]",
            "augment=aerial",
        ],
    ),
    "gray_jpeg": (lambda root: make_folder(root, "gray"), ["data.in_channels=1"]),
    "rgba_png_alpha_kept": (
        lambda root: make_folder(root, "rgba"),
        ["data.in_channels=4", "data.keep_alpha=true", "loss=ce_dice"],
    ),
    "zero_255_masks_label_map": (
        lambda root: make_folder(root, "rgb", stored=lambda m: m * 255),
        ["data.label_map={0:0,255:1}", "augment=albumentations"],
    ),
    "mmseg_layout": (
        _mmseg,
        [
            "data.img_dir='img_dir/{split}'",  # quoted: braces are Hydra syntax
            "data.ann_dir='ann_dir/{split}'",
            "data.img_suffix=.jpg",
            "data.seg_map_suffix=_mask.png",
        ],
    ),
}


def train_on(tmp_path: Path, kind: str) -> tuple[dict, Path]:
    write, extra = KINDS[kind]
    root = write(tmp_path / "data")
    cfg = compose_config("train", RUN + folder_overrides(root) + extra, tmp_path)
    metrics = train_mod.train(cfg)
    return metrics, Path(cfg.paths.output_dir)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_training_steps_on_each_input_kind(tmp_path: Path, kind: str) -> None:
    metrics, run = train_on(tmp_path, kind)
    assert np.isfinite(metrics["train/loss"]) and 0 <= metrics["val/mIoU"] <= 1
    for key in ("val/mDice", "val/mFscore", "val/mPrecision", "val/mRecall"):
        assert key in json.loads((run / "metrics.json").read_text())
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    assert hparams["in_channels"] == hparams["input_format"]["in_channels"]
    first = ckpt["state_dict"]["model.encoder.stages.0.patch_embed.proj.weight"]
    assert first.shape[1] == hparams["in_channels"]
    grid = np.asarray(Image.open(run / "predictions" / "latest.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.std() > 0  # a visible picture
    if kind == "tiff16_one_band":  # model.freeze_stages=-1: no encoder parameter optimised
        groups = ckpt["optimizer_states"][0]["param_groups"]
        assert {g["name"] for g in groups} == {"head"}
    if kind == "rgba_png_alpha_kept":  # loss=ce_dice logs both terms
        assert {"train/loss_ce", "train/loss_dice"} <= set(metrics)


@pytest.mark.slow
def test_four_band_checkpoint_predicts_exports_and_evaluates(tmp_path: Path) -> None:
    _, run = train_on(tmp_path, "tiff_four_bands")
    ckpt = run / "checkpoints" / "last.ckpt"
    images = tmp_path / "data" / "images" / "val"

    out = predict(
        compose_config(
            "predict",
            [f"ckpt_path={ckpt}", f"input={images}", f"output={tmp_path / 'p'}"],
            tmp_path,
        )
    )
    ids = np.asarray(Image.open(out / "s0.png"))
    overlay = np.asarray(Image.open(out / "s0_overlay.jpg"))
    assert ids.shape == (32, 32) and set(np.unique(ids)) <= {0, 1}
    assert overlay.shape == (32, 32, 3) and overlay.std() > 0  # 16-bit bands, stretched

    diffs = export(
        compose_config(
            "export",
            [
                f"ckpt_path={ckpt}",
                f"output={tmp_path / 'm.onnx'}",
                "height=32",
                "width=32",
                "check_size=[32,64]",
            ],
            tmp_path,
        )
    )
    assert max(diffs) < 1e-4
    import onnx

    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert props["in_channels"] == "4" and json.loads(props["max_value"]) == 255.0
    assert json.loads(props["mean"]) == pytest.approx(
        [128.502, 128.502, 128.502, 117.647], abs=1e-3
    )

    data = [o for o in folder_overrides(tmp_path / "data") if o != "data.batch_size=2"]
    bands = [
        "data.in_channels=4",
        "data.mean=[32768,32768,32768,30000]",
        "data.std=[18900,18900,18900,12000]",
    ]
    eval_cfg = compose_config("eval", [f"ckpt_path={ckpt}", *data, *bands], tmp_path)
    metrics = evaluate(eval_cfg)
    report = json.loads((Path(eval_cfg.paths.output_dir) / "metrics.json").read_text())
    assert report["mDice"] == pytest.approx(metrics["mDice"])
    assert set(report["per_class"]["fg"]) == {"IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"}
    rgb = compose_config("eval", [f"ckpt_path={ckpt}", *data], tmp_path)
    with pytest.raises(
        ValueError, match="takes 4 input channels but data 'FolderDataModule' reads 3"
    ):
        evaluate(rgb)


@pytest.mark.parametrize(
    ("overrides", "batch", "accumulate"),
    [
        (["experiment=ade20k"], 16, 1),  # before: the whole global batch on one GPU
        (["experiment=ade20k", "max_batch_per_device=2"], 2, 8),
        (["experiment=ade20k", "max_batch_per_device=2", "trainer=ddp", "trainer.devices=8"], 2, 1),
        (["experiment=cityscapes", "max_batch_per_device=3"], 2, 4),  # 3 does not divide 8
        (["experiment=voc", "max_batch_per_device=4", "trainer.devices=2"], 4, 2),
    ],
)
def test_max_batch_per_device_keeps_the_global_batch(
    tmp_path: Path, overrides: list[str], batch: int, accumulate: int
) -> None:
    cfg = compose_config("train", overrides, tmp_path)
    assert cfg.data.batch_size == batch
    assert cfg.trainer.accumulate_grad_batches == accumulate


class BatchRecorder(L.Callback):
    """(optimizer step, lr, sample names) of every training batch; stops after `stop_at` steps."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.batches: list[tuple[int, float, list[str]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        self.batches.append((trainer.global_step, lr, list(batch["name"])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True

    def steps(self) -> dict[int, tuple[float, list[str]]]:
        """optimizer step -> (its lr, the samples it was computed from)."""
        out: dict[int, tuple[float, list[str]]] = {}
        for step, lr, names in self.batches:
            out.setdefault(step, (lr, []))[1].extend(names)
        return out


@pytest.mark.slow
def test_accumulation_steps_see_the_same_samples_lr_and_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    common = ["trainer.max_steps=3", "trainer.val_check_interval=2", "scheduler.warmup_steps=2"]
    whole = BatchRecorder()
    with_callback(monkeypatch, whole)
    train_mod.train(compose_config("train", [*TINY, *common, "data.batch_size=4"], tmp_path / "a"))

    split = ["data.batch_size=2", "trainer.accumulate_grad_batches=2"]
    accumulated = BatchRecorder()
    with_callback(monkeypatch, accumulated)
    cfg = compose_config("train", [*TINY, *common, *split], tmp_path / "b")
    train_mod.train(cfg)
    assert accumulated.steps() == whole.steps()  # same images and lr for every optimizer step
    curve = json.loads((Path(cfg.paths.output_dir) / "learning_curve.json").read_text())
    assert [step for step, _ in curve["val_mIoU"]] == [2]  # every 2 steps, not 2 batches

    # stopped after step 1, resumed: the rest of the run as the uninterrupted one
    first = BatchRecorder(stop_at=1)
    with_callback(monkeypatch, first)
    train_mod.train(compose_config("train", [*TINY, *common, *split], tmp_path / "c"))
    resumed = BatchRecorder()
    with_callback(monkeypatch, resumed)
    train_mod.train(
        compose_config("train", [*TINY, *common, *split, "ckpt_path=last"], tmp_path / "c")
    )
    steps = accumulated.steps()
    assert first.steps() == {0: steps[0]}
    assert resumed.steps() == {s: steps[s] for s in (1, 2)}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stored", "labels", "loss"),
    [(None, [], ["loss=bce_dice"]), (lambda m: m * 255, ["data.label_map={0:0,255:1}"], [])],
    ids=["0_1_masks", "0_255_masks_label_map"],
)
def test_binary_training_with_one_output(tmp_path: Path, stored, labels, loss) -> None:
    """model.num_classes=1 on a folder of 0/1 PNG masks (0/255 through data.label_map): one
    logit trained with BCE (+ Dice), val/mIoU is the foreground IoU (the checkpoint monitor),
    the per-class table and the validation picture work, the threshold is kept in the
    checkpoint, and segformer-eval of it gives the run's own validation numbers."""
    root = make_folder(tmp_path / "data", stored=stored)
    data = folder_overrides(root) + labels
    binary = ["model.num_classes=1", "model.threshold=0.4", *loss]
    cfg = compose_config("train", RUN + data + binary, tmp_path)
    metrics = train_mod.train(cfg)
    run = Path(cfg.paths.output_dir)
    assert np.isfinite(metrics["train/loss"])
    assert metrics["val/mIoU"] == metrics["val/IoU/fg"] and "val/IoU/bg" in metrics
    assert ("train/loss_dice" in metrics) == bool(loss)
    ckpt = run / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    assert checkpoint["hyper_parameters"]["threshold"] == 0.4
    assert checkpoint["state_dict"]["model.head.classifier.weight"].shape[0] == 1
    model = SegFormer.from_pretrained(ckpt)
    assert (model.num_classes, model.threshold) == (1, 0.4)
    assert "mean (fg)" in (run / "val_per_class.txt").read_text()
    grid = np.asarray(Image.open(run / "predictions" / "latest.png"))
    assert grid.ndim == 3 and grid.std() > 0
    # the run validated one image (limit_val_batches=1): so does the evaluation
    checks = [f"ckpt_path={ckpt}", *data, "trainer.limit_val_batches=1"]
    evaluated = evaluate(compose_config("eval", checks, tmp_path))
    assert evaluated["mIoU"] == pytest.approx(metrics["val/mIoU"])


def test_binary_needs_two_classes_and_num_classes_null_or_1(tmp_path: Path) -> None:
    root = tmp_path / "data"
    three = ["data.classes=[a,b,c]", "model.num_classes=1"]
    cfg = compose_config("train", RUN + folder_overrides(root) + three, tmp_path)
    with pytest.raises(ValueError, match=r"num_classes=1 .* needs data of 2 classes .* has 3"):
        build_module(cfg, instantiate(cfg.data))
    cfg = compose_config("train", RUN + folder_overrides(root) + ["model.num_classes=3"], tmp_path)
    with pytest.raises(ValueError, match=r"model.num_classes=3: null \(one output per class, 2"):
        build_module(cfg, instantiate(cfg.data))
