"""Scale-out: DDP on 2 CPU processes, Hydra multirun, an Optuna sweep, wandb offline + resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY, compose_train

from segformer.models import SegFormer
from segformer.train import train


def run_train(root: Path, *overrides: str, env: dict[str, str] | None = None) -> str:
    """`python -m segformer.train` in a subprocess (as users run it); returns its output."""
    flags = [o for o in overrides if o.startswith("-")]  # argparse wants flags before overrides
    rest = [o for o in overrides if not o.startswith("-")]
    cmd = [sys.executable, "-m", "segformer.train", *flags, f"paths.root_dir={root}", *TINY, *rest]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
def test_ddp_two_cpu_processes_fit_validate_and_checkpoint_loads(tmp_path: Path) -> None:
    cfg = compose_train(tmp_path, ["trainer=ddp_cpu", "callbacks.prediction_grid=null"])
    metrics = train(cfg)
    assert 0.0 <= metrics["val/mIoU"] <= 1.0
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 2
    model = SegFormer.from_pretrained(ckpt)  # loads in one process
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 6, 64, 64)


@pytest.mark.slow
def test_multirun_jobs_get_distinct_run_directories(tmp_path: Path) -> None:
    run_train(tmp_path, "-m", "optimizer.lr=1e-3,2e-3")
    sweeps = list((tmp_path / "logs" / "train" / "synthetic_b0").glob("multirun_*"))
    assert len(sweeps) == 1
    ckpts = sorted(sweeps[0].glob("*/checkpoints/last.ckpt"))
    assert [c.parents[1].name for c in ckpts] == ["0", "1"]


@pytest.mark.slow
def test_optuna_sweep_two_trials(tmp_path: Path) -> None:
    out = run_train(
        tmp_path,
        "hparams_search=synthetic_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
    )
    sweeps = list((tmp_path / "logs" / "train" / "synthetic_b0").glob("multirun_*"))
    assert len(sweeps) == 1
    assert len(list(sweeps[0].glob("*/metrics.json"))) == 2
    assert (sweeps[0] / "optimization_results.yaml").is_file(), out[-2000:]


@pytest.mark.slow
def test_wandb_offline_run_and_resume_reuse_the_id(tmp_path: Path) -> None:
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    run_train(tmp_path, "logger=wandb", env=env)
    runs = list((tmp_path / "logs" / "train" / "synthetic_b0").iterdir())
    assert len(runs) == 1
    run_id = (runs[0] / "wandb_id.txt").read_text().strip()
    offline = list(runs[0].glob(f"wandb/offline-run-*-{run_id}"))
    assert offline and any(offline[0].glob("*.wandb"))

    run_train(tmp_path, "logger=wandb", "ckpt_path=last", "trainer.max_steps=4", env=env)
    assert list((tmp_path / "logs" / "train" / "synthetic_b0").iterdir()) == runs
    resumed = list(runs[0].glob(f"wandb/offline-run-*-{run_id}"))
    assert len(resumed) == 2  # a second offline segment of the same run id
