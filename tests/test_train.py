"""The training entry point end to end on tiny synthetic data: fit, validate, outputs, resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from helpers import CAMVID_ROOT, TINY, compose_config, compose_train, with_callback
from omegaconf import OmegaConf

import segformer.train as train_mod
from segformer.optim import WarmupPolyLR


class StepRecorder(L.Callback):
    """Records (global_step, lr) before every optimizer step; optionally stops after `stop_at`."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.stop_at = stop_at
        self.seen: list[tuple[int, float]] = []
        self.best_at_start: float | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        self.best_at_start = pl_module.best_miou

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
    assert ckpt["hyper_parameters"]["net"]["encoder"]["variant"] == "b0"  # the recorded network
    assert ckpt["optimizer_states"][0]["param_groups"][0]["fused"] is True  # fused: null resolved


@pytest.mark.slow
def test_resume_continues_at_the_same_step_and_lr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    steps = ["trainer.max_steps=4", "trainer.val_check_interval=2", "scheduler.warmup_steps=3"]
    first = StepRecorder(stop_at=2)
    with_callback(monkeypatch, first)
    cfg = compose_train(tmp_path, steps)
    first_metrics = train_mod.train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    assert [s for s, _ in first.seen] == [0, 1]

    second = StepRecorder()
    with_callback(monkeypatch, second)
    cfg2 = compose_train(tmp_path, [*steps, "ckpt_path=last"])
    assert Path(cfg2.paths.output_dir) == run_dir  # same run directory, not a new timestamp
    second_metrics = train_mod.train(cfg2)
    assert [s for s, _ in second.seen] == [2, 3]
    # the best validation score covers the whole run, not only the resumed part
    assert second.best_at_start == first_metrics["val/mIoU_best"]
    curve = json.loads((run_dir / "learning_curve.json").read_text())["val_mIoU"]
    assert second_metrics["val/mIoU_best"] == pytest.approx(max(m for _, m in curve))
    # one last.ckpt (no last-v1 beside it), at the final step whichever validation was best
    assert [p.name for p in (run_dir / "checkpoints").glob("last*")] == ["last.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 4 and last["best_miou"] == second_metrics["val/mIoU_best"]

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
            "budget.minutes=null",
            "trainer.precision=32-true",
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


@pytest.mark.slow
def test_quiet_logs_test_split_and_hyperparameters_logged_once(tmp_path: Path) -> None:
    """trainer.enable_progress_bar=false works (the config's rich bar is dropped), test=true keeps
    the validation results next to the test ones, and the loggers get the config once."""
    cfg = compose_train(
        tmp_path,
        [
            "trainer.enable_progress_bar=false",
            "test=true",
            "data.num_test=4",
            "trainer.limit_test_batches=1",
        ],
    )
    metrics = train_mod.train(cfg)
    run = Path(cfg.paths.output_dir)
    saved = json.loads((run / "metrics.json").read_text())
    assert {"val/mIoU", "val/mIoU_best", "test/mIoU"} <= set(saved)
    assert saved == metrics
    # the CSV logger's hparams.yaml holds the resolved config and nothing else (the module's
    # hyper-parameters were logged on top of it once: num_classes, class_names, ...)
    hparams = yaml.safe_load(next(run.glob("csv/**/hparams.yaml")).read_text())
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert set(hparams) == set(resolved)
    assert hparams["model"] == resolved["model"]


def test_progress_bar_counts_steps_not_epochs() -> None:
    from segformer.callbacks import StepProgressBar

    bar = StepProgressBar()
    trainer = L.Trainer(max_steps=5, max_epochs=-1, callbacks=[bar], logger=False)
    bar._trainer = trainer
    description = bar._get_train_description(3)
    assert description.strip() == "Epoch 3"  # Lightning's own bar: "Epoch 3/-2"
    assert bar.get_metrics(trainer, L.LightningModule())["step"] == "0/5"


# the hyper-parameter names SegFormerModule wrote before 0.2 (encoder/decoder config groups)
@pytest.mark.slow
def test_a_checkpoint_written_before_the_rename_still_loads(tmp_path: Path) -> None:
    """Checkpoints of earlier versions load in from_pretrained, segformer-eval and a resume:
    the network as flat hyper-parameters (variant, decoder_dim, ... before the encoder /
    decoder specs), ``ln_eps`` (before its rename), no ``pretrained``, no stored best score."""
    from segformer.eval import evaluate
    from segformer.models import SegFormer

    cfg = compose_train(tmp_path, ["model.encoder.ln_eps_preset=hf"])
    train_mod.train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = ckpt["hyper_parameters"]
    net = hparams.pop("net")
    hparams.update(
        variant=net["encoder"]["variant"],
        decoder_dim=None,
        drop_path_rate=net["encoder"]["drop_path_rate"],
        dropout=net["decoder"]["dropout"],
        ln_eps=net["encoder"]["ln_eps_preset"],
    )
    del hparams["pretrained"], ckpt["best_miou"]
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)

    net = SegFormer.from_pretrained(old)
    assert net.ln_eps_preset == "hf"  # read from the old name
    data = [o for o in TINY if o.startswith("data.")]
    metrics = evaluate(compose_config("eval", [f"ckpt_path={old}", *data], tmp_path))
    assert 0.0 <= metrics["mIoU"] <= 1.0
    resumed = compose_train(
        tmp_path, ["model.encoder.ln_eps_preset=hf", f"ckpt_path={old}", "trainer.max_steps=3"]
    )
    assert torch.isfinite(torch.tensor(train_mod.train(resumed)["train/loss"]))


@pytest.mark.slow
def test_ema_validates_the_average_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """callbacks=ema: validation and the checkpoint's state_dict are the averaged weights (what
    segformer-eval then reproduces), the raw ones travel beside them, and a run stopped at step 2
    and resumed ends with the same average and raw weights as an uninterrupted one."""
    from segformer.eval import evaluate

    steps = [
        "callbacks=ema",
        "callbacks.ema.decay=0.5",
        "callbacks.prediction_grid=null",
        "trainer.max_steps=4",
    ]
    cfg = compose_train(tmp_path / "whole", steps)
    whole_metrics = train_mod.train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints/last.ckpt"
    whole = torch.load(ckpt, weights_only=True)
    average, raw = whole["state_dict"], whole["current_model_state"]
    assert average.keys() == raw.keys()
    assert any(not torch.equal(average[k], raw[k]) for k in average)

    data = [o for o in TINY if o.startswith("data.")]
    # fp32 as the training (precision auto could pick bf16 on a busy machine)
    over = [f"ckpt_path={ckpt}", "trainer.limit_val_batches=1", "trainer.precision=32-true"]
    eval_cfg = compose_config("eval", [*over, *data], tmp_path / "eval")
    assert evaluate(eval_cfg)["mIoU"] == pytest.approx(whole_metrics["val/mIoU"], abs=1e-6)

    with_callback(monkeypatch, StepRecorder(stop_at=2))
    train_mod.train(compose_train(tmp_path / "split", steps))
    with_callback(monkeypatch, StepRecorder())
    cfg = compose_train(tmp_path / "split", [*steps, "ckpt_path=last"])
    assert train_mod.train(cfg)["val/mIoU"] == whole_metrics["val/mIoU"]
    split = torch.load(Path(cfg.paths.output_dir) / "checkpoints/last.ckpt", weights_only=True)
    for part in ("state_dict", "current_model_state"):
        for key, value in whole[part].items():
            torch.testing.assert_close(split[part][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_plateau_schedule_steps_after_each_validation_and_resumes(tmp_path: Path) -> None:
    """scheduler=plateau: ReduceLROnPlateau stepped after every validation with val/mIoU; with
    an improvement threshold no run can meet, every validation after the first cuts the lr, so
    after k validations lr = base x factor^(k-1); a resumed run keeps counting (its state is in
    the checkpoint), where a fresh scheduler would take the next validation as its best."""
    plateau = [
        "scheduler=plateau",
        "scheduler.patience=0",
        "+scheduler.threshold=1.0",
        "+scheduler.threshold_mode=abs",
        "trainer.val_check_interval=2",
    ]
    cfg = compose_train(tmp_path, [*plateau, "trainer.max_steps=6"])
    train_mod.train(cfg)
    last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    base = cfg.optimizer.lr

    def lrs() -> list[float]:
        ckpt = torch.load(last, weights_only=True)
        return [g["lr"] for g in ckpt["optimizer_states"][0]["param_groups"]]

    head_mult = cfg.model.head_lr_mult
    assert (min(lrs()), max(lrs())) == pytest.approx((base * 0.25, base * head_mult * 0.25))
    resumed = compose_train(tmp_path, [*plateau, "trainer.max_steps=8", "ckpt_path=last"])
    train_mod.train(resumed)
    assert max(lrs()) == pytest.approx(base * head_mult * 0.125)
