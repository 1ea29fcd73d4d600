"""What the short CPU training comparisons share: running a command, and the segformer-train
settings of a run from scratch on small folder data (benchmarks/multiband.py,
benchmarks/binary_vs_softmax.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run(command: list[str], cwd: Path) -> str:
    """Run ``command`` in ``cwd``; its stdout, or exit with its output's tail when it fails."""
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def short_run_settings(size: int, steps: int) -> list[str]:
    """MiT-B0 from scratch on ``size`` px crops for ``steps`` steps on the CPU (lr 1e-3, decoder
    x1, 30 warmup steps, batch 8), validated once at the end, no pictures; data.* of the folder
    (root, classes, bands) and the seed are the caller's."""
    return [
        f"data.crop_size=[{size},{size}]",
        f"data.scale=[{size},{size}]",
        "data.ratio_range=[0.75,1.25]",
        "data.cat_max_ratio=1.0",
        "data.photometric=false",
        "data.batch_size=8",
        "data.val_batch_size=16",
        "data.num_workers=2",
        "model.head_lr_mult=1.0",
        "optimizer.lr=1e-3",
        "scheduler.warmup_steps=30",
        "trainer=cpu",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={steps}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "callbacks.prediction_grid=null",
        "print_config=false",
    ]
