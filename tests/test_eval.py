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


def test_paper_experiment_evaluates_on_a_cpu_only_machine(tmp_path: Path) -> None:
    """`segformer-eval experiment=cityscapes ckpt_path=...` with no trainer override runs on
    whatever the machine has (here a CPU): the paper's sliding-window evaluation of a 19-class
    checkpoint on a Cityscapes-layout folder (two small frames)."""
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from segformer.models import SegFormer

    for i in range(2):
        frame = f"aachen_000000_00000{i}"
        image = tmp_path / "cityscapes" / "leftImg8bit" / "val" / "aachen"
        mask = tmp_path / "cityscapes" / "gtFine" / "val" / "aachen"
        image.mkdir(parents=True, exist_ok=True)
        mask.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (64, 128, 3), dtype=np.uint8)).save(
            image / f"{frame}_leftImg8bit.png"
        )
        ids = rng.integers(0, 19, (64, 128), dtype=np.uint8)
        Image.fromarray(ids).save(mask / f"{frame}_gtFine_labelTrainIds.png")
    torch.manual_seed(0)
    ckpt = tmp_path / "b0_city.safetensors"
    save_file(SegFormer("b0", num_classes=19).state_dict(), ckpt)
    cfg = compose_config(
        "eval",
        [
            "experiment=cityscapes",
            f"ckpt_path={ckpt}",
            f"data.root={tmp_path / 'cityscapes'}",
            "data.num_workers=0",
            "inference.crop=[64,64]",
            "inference.stride=[48,48]",
        ],
        tmp_path,
    )
    assert cfg.trainer.accelerator == "auto"
    metrics = evaluate(cfg)
    assert 0.0 <= metrics["mIoU"] <= 1.0
    report = json.loads(next((tmp_path / "logs" / "eval").rglob("metrics.json")).read_text())
    assert report["inference"]["mode"] == "slide"
    assert report["precision"]["precision"] in ("32-true", "bf16-mixed")
