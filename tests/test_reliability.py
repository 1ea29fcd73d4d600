"""Interrupted training, non-finite losses, exact distributed evaluation, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import TINY, compose_train, with_callback

from segformer.data import SyntheticDataModule
from segformer.models import segformer_net
from segformer.module import SegFormerModule
from segformer.train import train

# 40 samples / batch 4 = 10 batches an epoch; 24 steps cross two epoch boundaries; last.ckpt
# every 4 steps. Dropout and drop path are on (defaults), so the RNG state matters too.
RESUME = [o for o in TINY if not o.startswith(("data.num_train", "trainer.max_steps"))] + [
    "data.num_train=40",
    "trainer.max_steps=24",
    "trainer.val_check_interval=12",
    "callbacks.last_checkpoint.every_n_train_steps=4",
    "callbacks.prediction_grid=null",
    "callbacks.rich_progress_bar=null",
    "callbacks.rich_model_summary=null",
    "run_name=resume",
    "seed=7",
]


def _train_cmd(root: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "segformer.train", f"paths.root_dir={root}", *RESUME, *overrides]


def _last_ckpt(root: Path) -> Path | None:
    found = list((root / "logs" / "train" / "resume").glob("*/checkpoints/last.ckpt"))
    return found[0] if found else None


# the killed run plans with a time budget (capped at the same 24 steps, validating at 12 and 24);
# the resumed one is given a budget far too small to plan with, so it must keep the stored plan
BUDGETED = (["budget.minutes=5", "budget.validations=2"], ["budget.minutes=0.01"])


@pytest.mark.slow
@pytest.mark.parametrize("budget", [([], []), BUDGETED], ids=["steps", "budget"])
def test_sigkill_mid_epoch_then_resume_gives_the_same_weights(
    tmp_path: Path, budget: tuple[list[str], list[str]]
) -> None:
    """A run killed (SIGKILL) after its step-4 checkpoint and resumed with ckpt_path=last ends
    with bit-identical weights and metrics to an uninterrupted run: same samples in the same
    order from the same augmentation seeds (ResumableSampler), same dropout draws (RNG state in
    the checkpoint), same optimizer/scheduler state, same single-threaded-per-op CPU kernels.
    With a time budget, the calibration before fit leaves all of that untouched and the resumed
    run continues the stored plan. Tolerance: exact (0); a resumed run repeats the same float
    operations in the same order."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    first, resume = budget
    subprocess.run(_train_cmd(whole), check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(
        _train_cmd(killed, *first), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 300
    while _last_ckpt(killed) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    step = torch.load(_last_ckpt(killed), weights_only=True)["global_step"]
    assert 4 <= step < 24 and step % 10 != 0  # killed mid-run, resumed mid-epoch

    resumed = subprocess.run(
        _train_cmd(killed, *first, *resume, "ckpt_path=last"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(_last_ckpt(whole), weights_only=True)
    b = torch.load(_last_ckpt(killed), weights_only=True)
    assert a["global_step"] == b["global_step"] == 24
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=0, msg=key)
    run_a, run_b = _last_ckpt(whole).parents[1], _last_ckpt(killed).parents[1]
    metrics_a = json.loads((run_a / "metrics.json").read_text())
    metrics_b = json.loads((run_b / "metrics.json").read_text())
    assert metrics_a["val/mIoU"] == metrics_b["val/mIoU"]


class PoisonBatch(L.Callback):
    """Fills the images of the batch at `step` with NaN (once)."""

    def __init__(self, step: int) -> None:
        self.step, self.done = step, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step and not self.done:
            batch["image"].fill_(float("nan"))
            self.done = True


@pytest.mark.slow
def test_nonfinite_loss_stops_the_run_naming_the_batch(tmp_path, monkeypatch) -> None:
    with_callback(monkeypatch, PoisonBatch(step=1))
    cfg = compose_train(tmp_path, ["trainer.max_steps=3", "callbacks.prediction_grid=null"])
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 1 \(batch: synth"):
        train(cfg)


@pytest.mark.slow
def test_nonfinite_loss_skip_policy_skips_and_counts(tmp_path, monkeypatch) -> None:
    with_callback(monkeypatch, PoisonBatch(step=1))
    cfg = compose_train(
        tmp_path,
        [
            "trainer.max_steps=3",
            "trainer.val_check_interval=3",  # last.ckpt at the end
            "callbacks.prediction_grid=null",
            "model.nonfinite_loss=skip",
        ],
    )
    metrics = train(cfg)
    assert metrics["train/nonfinite_skipped"] == 1.0
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 and ckpt["nonfinite_skipped"] == 1
    for key, value in ckpt["state_dict"].items():  # weights and BatchNorm statistics
        assert value.isfinite().all(), key


class SaveConfmat(L.Callback):
    """Rank 0 saves the validation confusion matrix (summed over processes) to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            torch.save(pl_module.last_results["val"]["confmat"], self.path)


@pytest.mark.slow
def test_two_process_validation_counts_every_sample_once(tmp_path: Path) -> None:
    """5 validation images (odd) on 2 gloo processes: the same confusion matrix as 1 process,
    every pixel counted once (Lightning's DistributedSampler would pad rank 1 with a repeat of
    image 0: 6 images counted)."""
    confmats = []
    for i, (devices, strategy) in enumerate([(1, "auto"), (2, "ddp_spawn")]):
        torch.manual_seed(0)  # the same weights, in a fresh module each time
        net = segformer_net("b0", drop_path_rate=0.0, dropout=0.0)
        module = SegFormerModule(num_classes=6, net=net)
        dm = SyntheticDataModule(num_val=5, image_size=32, val_batch_size=2, num_workers=0)
        path = tmp_path / f"confmat{i}.pt"
        trainer = L.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy=strategy,
            use_distributed_sampler=False,  # as configs/trainer/default.yaml
            default_root_dir=tmp_path,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[SaveConfmat(path)],
        )
        trainer.validate(module, datamodule=dm)
        confmats.append(torch.load(path, weights_only=True))
    one, two = confmats
    assert one.sum() == 5 * 32 * 32  # every pixel of the 5 images, once
    torch.testing.assert_close(two, one, rtol=0, atol=0)


@pytest.mark.slow
def test_same_seed_gives_identical_runs(tmp_path: Path) -> None:
    """Two CPU runs (2 loader workers, dropout on) with one seed: identical metrics and weights."""
    overrides = ["trainer.max_steps=4", "data.num_workers=2", "callbacks.prediction_grid=null"]
    runs = []
    for name in ("a", "b"):
        cfg = compose_train(tmp_path / name, overrides)
        metrics = train(cfg)
        ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        runs.append((metrics, torch.load(ckpt, weights_only=True)["state_dict"]))
    (metrics_a, weights_a), (metrics_b, weights_b) = runs
    assert metrics_a == metrics_b
    for key, value in weights_a.items():
        torch.testing.assert_close(weights_b[key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_bad_dataset_exits_nonzero_naming_the_problem(tmp_path: Path) -> None:
    """The command line (as users run it): a mask with a class id beyond num_classes stops
    segformer-train with exit status 1 and the file, value and num_classes in the message, and
    before any checkpoint is written."""
    from PIL import Image

    root = tmp_path / "ds"
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (32, 24)).save(root / "images" / split / f"{i}.png")
            Image.new("L", (32, 24), 1).save(root / "masks" / split / f"{i}.png")
    Image.new("L", (32, 24), 7).save(root / "masks" / "train" / "2.png")  # id 7, 3 classes
    settings = [o for o in RESUME if not o.startswith("data.")]  # synthetic-only keys out
    data = ["data=folder", f"data.root={root}", "data.classes=[a,b,c]", "data.batch_size=2"]
    data += ["data.crop_size=[24,24]", "data.num_workers=1"]  # read in a worker process
    cmd = [sys.executable, "-m", "segformer.train", f"paths.root_dir={tmp_path}", *settings, *data]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"mask {root}/masks/train/2.png has value 7" in proc.stderr
    assert "num_classes=3" in proc.stderr
    assert _last_ckpt(tmp_path) is None
