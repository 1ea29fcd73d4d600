"""segformer-eval on a checkpoint the training entry point wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import TINY, compose_config, compose_train

from segformer.eval import evaluate
from segformer.train import train


@pytest.mark.slow
def test_eval_reproduces_validation_and_writes_reports(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["callbacks.prediction_grid=null"])
    train_metrics = train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"

    data = [o for o in TINY if o.startswith("data.")]
    eval_cfg = compose_config(
        "eval",
        [f"ckpt_path={ckpt}", "trainer.limit_val_batches=1", "trainer.precision=32-true", *data],
        tmp_path,
    )
    metrics = evaluate(eval_cfg)
    assert metrics["mIoU"] == pytest.approx(train_metrics["val/mIoU"], abs=1e-6)

    out = Path(eval_cfg.paths.output_dir)
    report = json.loads((out / "metrics.json").read_text())
    assert report["mIoU"] == pytest.approx(metrics["mIoU"])
    assert set(report["per_class"]) == {"background", "disc", "square", "triangle", "ring", "cross"}
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_rejects_a_checkpoint_with_other_classes(tmp_path: Path) -> None:
    import torch

    from segformer.models import SegFormer

    path = tmp_path / "b0_19.pt"
    torch.save(SegFormer("b0", num_classes=19).state_dict(), path)
    cfg = compose_config("eval", [f"ckpt_path={path}", "data.num_workers=0"], tmp_path)
    with pytest.raises(ValueError, match="19 classes"):
        evaluate(cfg)


@pytest.mark.slow
def test_eval_on_two_ddp_processes_equals_one_process(tmp_path: Path) -> None:
    """ddp_spawn evaluates in other processes: the metrics and reports still come back."""
    cfg = compose_train(tmp_path, ["callbacks.prediction_grid=null"])
    train(cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    data = [o for o in TINY if o.startswith("data.")]
    common = [f"ckpt_path={ckpt}", "trainer.precision=32-true", *data]
    one_cfg = compose_config("eval", [*common, "run_name=one"], tmp_path)
    one_dir = Path(one_cfg.paths.output_dir)
    one = evaluate(one_cfg)
    ddp_cfg = compose_config("eval", [*common, "run_name=two", "trainer=ddp_cpu"], tmp_path)
    two_dir = Path(ddp_cfg.paths.output_dir)
    assert two_dir != one_dir and not (two_dir / "metrics.json").exists()
    two = evaluate(ddp_cfg)
    assert two == pytest.approx(one, abs=1e-6)
    report = json.loads((two_dir / "metrics.json").read_text())
    assert report["mIoU"] == pytest.approx(one["mIoU"], abs=1e-6)
    assert len(report["per_class"]) == 6
