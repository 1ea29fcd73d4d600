"""Collect a finished training run into one JSON file for benchmarks/results/.

    .venv/bin/python benchmarks/collect_run.py logs/train/camvid_b0/<time> \\
        benchmarks/results/camvid_b0_cpu.json [--command "segformer-train ..."]

Takes the run's final metrics (metrics.json), per-class validation IoU, learning curve
(validation mIoU per step, training loss every 100 steps), resolved config, wall time (from the
config written at start to the metrics written at the end) and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path

import torch
import yaml


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", default=None, help="the command that made the run")
    args = parser.parse_args()
    run = args.run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    curve = json.loads((run / "learning_curve.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    wall = (run / "metrics.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    result = {
        "command": args.command,
        "run_dir": str(run),
        "date": date.today().isoformat(),
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__},
        "wall_minutes": round(wall / 60, 1),
        "val_mIoU": metrics.get("val/mIoU"),
        "val_mIoU_best": metrics.get("val/mIoU_best"),
        "val_mAcc": metrics.get("val/mAcc"),
        "val_aAcc": metrics.get("val/aAcc"),
        "val_IoU_per_class": {
            k.removeprefix("val/IoU/"): v for k, v in metrics.items() if k.startswith("val/IoU/")
        },
        "val_mIoU_by_step": curve["val_mIoU"],
        "train_loss_every_100_steps": [p for p in curve["train_loss"] if p[0] % 100 == 0],
        "config": config,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{args.out}: val mIoU {result['val_mIoU']:.4f} in {result['wall_minutes']} min")


if __name__ == "__main__":
    main()
