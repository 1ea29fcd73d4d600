"""Binary masks: one sigmoid output (model.num_classes=1) against two softmax outputs.

    .venv/bin/python benchmarks/binary_vs_softmax.py [--steps 300] [--seeds 0 1 2]
        [--out benchmarks/results/binary_vs_softmax.json]

The dataset is written to disk as people have binary data: RGB PNG images + 0/1 PNG masks in
the folder layout. Images are the synthetic shapes (data/synthetic.py), the mask is 1 on every
shape and 0 on the background. Each seed trains MiT-B0 from scratch through segformer-train for
the same steps twice, on the same data and settings: two outputs with softmax cross-entropy (the
default for data.classes=[background,shape]) and one output with sigmoid BCE
(model.num_classes=1). The foreground IoU of the last validation (val/IoU/shape; for the binary
run also its val/mIoU) says whether the binary head learns as well.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from short_runs import run, short_run_settings

from segformer.data.synthetic import generate
from segformer.precision import cpu_class

SIZE = 64
CLASSES = ["background", "shape"]


def write_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    for s, (split, n) in enumerate(counts.items()):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, mask = generate(np.random.default_rng([seed, s, i]), SIZE)
            Image.fromarray(image).save(root / "images" / split / f"{i:04d}.png")
            binary = (mask > 0).astype(np.uint8)  # every shape is foreground
            Image.fromarray(binary).save(root / "masks" / split / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/binary_vs_softmax.json")
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="binary_"))
    data = work / "data"
    write_dataset(data, {"train": args.train, "val": args.val})
    folder = ["data=folder", f"data.root={data}", f"data.classes=[{','.join(CLASSES)}]"]
    # fp32 on any CPU: the two variants compare at one precision
    train = [*folder, *short_run_settings(SIZE, args.steps), "trainer.precision=32-true"]
    variants = {"softmax, 2 outputs (CE)": [], "sigmoid, 1 output (BCE)": ["model.num_classes=1"]}
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for seed in args.seeds:
        for name, extra in variants.items():
            run_name = f"{'binary' if extra else 'softmax'}_{seed}"
            settings = [*train, *extra, f"seed={seed}", f"run_name={run_name}"]
            start = time.perf_counter()
            run([sys.executable, "-m", "segformer.train", *settings], work)
            wall = time.perf_counter() - start
            metrics_file = next((work / "logs" / "train" / run_name).glob("*/metrics.json"))
            metrics = json.loads(metrics_file.read_text())
            results[name].append(
                {
                    "seed": seed,
                    "foreground_IoU": round(metrics["val/IoU/shape"], 4),
                    "background_IoU": round(metrics["val/IoU/background"], 4),
                    "val_mIoU": round(metrics["val/mIoU"], 4),
                    "val_aAcc": round(metrics["val/aAcc"], 4),
                    "wall_s": round(wall, 1),
                }
            )
            print(name, seed, results[name][-1], flush=True)
    summary = {}
    for name, runs in results.items():
        ious = [r["foreground_IoU"] for r in runs]
        spread = statistics.stdev(ious) if len(ious) > 1 else 0.0
        summary[name] = {"foreground_IoU_mean": round(statistics.mean(ious), 4)}
        summary[name]["foreground_IoU_std"] = round(spread, 4)
    out = {
        "what": __doc__.split("\n\n")[2].strip().replace("\n", " "),
        "date": str(date.today()),
        "cpu_class": cpu_class(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "script": f"python benchmarks/binary_vs_softmax.py --steps {args.steps} --seeds "
        + " ".join(map(str, args.seeds)),
        "dataset": {"train": args.train, "val": args.val, "size": SIZE, "classes": CLASSES},
        "command": "segformer-train " + " ".join(train).replace(str(data), "$DATA"),
        "variants": {name: extra for name, extra in variants.items()},
        "summary": summary,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
