"""The training entry point end to end on tiny synthetic data: fit, validate, outputs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import CAMVID_ROOT, compose_config, compose_train, with_callback

import segformer.train as train_mod
from segformer.optim import WarmupPolyLR


class StepRecorder(L.Callback):
    """Records (global_step, lr) before every optimizer step; optionally stops after `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.seen: list[tuple[int, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.global_step, trainer.optimizers[0].param_groups[0]["lr"]))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stop_at is not None and trainer.global_step >= self.stop_at:
            trainer.should_stop = True


@pytest.mark.slow
def test_fit_and_validate_two_steps(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path)
    metrics = train_mod.train(cfg)
    run = Path(cfg.paths.output_dir)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    assert "train/loss" in metrics and torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "predictions" / "latest.png").is_file()
    assert (run / "config.yaml").is_file()
    assert json.loads((run / "metrics.json").read_text())["val/mIoU"] == metrics["val/mIoU"]
    curve = json.loads((run / "learning_curve.json").read_text())
    assert curve["val_mIoU"] == [[2, metrics["val/mIoU"]]]  # this validation's, not the last
    assert [step for step, _ in curve["train_loss"]] == [1, 2]
    assert (run / "learning_curve.png").stat().st_size > 0
    assert "IoU" in (run / "val_per_class.txt").read_text()
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # no pickled code
    assert ckpt["global_step"] == 2
    assert ckpt["hyper_parameters"]["variant"] == "b0"


@pytest.mark.slow
def test_resume_continues_at_the_same_step_and_lr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = ["trainer.max_steps=4", "trainer.val_check_interval=2", "scheduler.warmup_steps=3"]
    first = StepRecorder(stop_at=2)
    with_callback(monkeypatch, first)
    cfg = compose_train(tmp_path, steps)
    train_mod.train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert [s for s, _ in first.seen] == [0, 1]

    second = StepRecorder()
    with_callback(monkeypatch, second)
    cfg2 = compose_train(tmp_path, [*steps, "ckpt_path=last"])
    assert Path(cfg2.paths.output_dir) == run_dir  # same run directory, not a new timestamp
    train_mod.train(cfg2)
    assert [s for s, _ in second.seen] == [2, 3]

    # the lr the schedule gives at steps 2 and 3 of a 4-step run, as uninterrupted
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.optimizer.lr)
    sched = WarmupPolyLR(opt, total_steps=4, warmup_steps=3, warmup_ratio=1e-6)
    expected = [cfg.optimizer.lr * sched.factor(s) for s in (2, 3)]
    assert [lr for _, lr in second.seen] == pytest.approx(expected, rel=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(
    not (CAMVID_ROOT / "trainannot").is_dir(), reason=f"real CamVid not found at {CAMVID_ROOT}"
)
def test_one_epoch_on_real_camvid(tmp_path: Path) -> None:
    cfg = compose_config(
        "train",
        [
            "data=camvid",
            f"data.root={CAMVID_ROOT}",
            "data.crop_size=[128,128]",
            "data.scale=[240,180]",
            "data.batch_size=8",
            "data.num_workers=2",
            "trainer.max_steps=-1",
            "trainer.max_epochs=1",
            "trainer.val_check_interval=null",
            "trainer.check_val_every_n_epoch=1",
            "trainer.limit_val_batches=4",
            "trainer.num_sanity_val_steps=0",
            "run_name=camvid_smoke",
            "print_config=false",
        ],
        tmp_path,
    )
    metrics = train_mod.train(cfg)
    state = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 367 // 8  # one epoch, last partial batch dropped
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
