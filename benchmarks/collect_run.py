"""Collect finished training runs into one JSON file for benchmarks/results/.

    .venv/bin/python benchmarks/collect_run.py logs/train/camvid_b0/<time> \\
        benchmarks/results/camvid_b0_cpu.json [--command "segformer-train ..."]
    .venv/bin/python benchmarks/collect_run.py --variants A=logs/train/a/<time> B=... \\
        benchmarks/results/camvid_grouped_variants.json [--chosen B] [--what "..."] [--add]

--add keeps the runs already in the file (their run directories may be gone) and adds these,
each with its own date and machine.

Per run: final metrics (metrics.json), per-class validation IoU, learning curve (validation mIoU
per step, training loss every 100 steps), the run plan (precision, time budget), resolved
config, wall time (config written at start to metrics written at the end) and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import date
from pathlib import Path
from typing import Any

import torch
import yaml


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor(),
    )  # fmt: skip
    return {
        "cpu": cpu,
        "capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }


def collect(run: Path) -> dict[str, Any]:
    metrics = json.loads((run / "metrics.json").read_text())
    curve = json.loads((run / "learning_curve.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    plan_file = run / "run_plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    wall = (run / "metrics.json").stat().st_mtime - (run / "config.yaml").stat().st_mtime
    return {
        "run_dir": str(run),
        "wall_minutes": round(wall / 60, 1),
        "run_plan": plan,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN_DIR, or NAME=RUN_DIR ... with --variants")
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", default=None, help="the command that made the run")
    parser.add_argument("--variants", action="store_true", help="several named runs")
    parser.add_argument("--chosen", default=None, help="--variants: the name of the one chosen")
    parser.add_argument("--what", default=None, help="--variants: what they compare")
    parser.add_argument("--add", action="store_true", help="--variants: add to the file's runs")
    args = parser.parse_args()
    head = {"date": date.today().isoformat(), "machine": machine()}
    if args.variants:
        runs = {n: collect(Path(d)) for n, d in (r.split("=", 1) for r in args.runs)}
        if args.add:
            result = json.loads(args.out.read_text())
            result["what"] = args.what or result["what"]
            result["chosen"] = args.chosen or result["chosen"]
            result["runs"].update({n: {**head, **r} for n, r in runs.items()})
        else:
            result = {**head, "what": args.what, "chosen": args.chosen, "runs": runs}
        summary = {n: r["val_mIoU"] for n, r in result["runs"].items()}
        print(f"{args.out}: val mIoU {json.dumps(summary)}")
    else:
        (run,) = args.runs
        result = {"command": args.command, **head, **collect(Path(run))}
        print(f"{args.out}: val mIoU {result['val_mIoU']:.4f} in {result['wall_minutes']} min")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
