"""Does a 4-band model use its 4th band? A short CPU run on a generated 4-band 16-bit dataset.

    .venv/bin/python benchmarks/multiband.py [--steps 300] [--out benchmarks/results/multiband.json]

The dataset is written to disk as people have such data: 4-band uint16 TIFFs (bands planar, as
GDAL exports them) + class-id PNG masks in the folder layout. Masks are the synthetic shapes
(6 classes, data/synthetic.py); the RGB bands are a *different* synthetic image (shapes and
textures unrelated to the mask: uninformative, even misleading), and band 3 ("NIR") carries the
class as a level per class plus strong pixel noise. Both runs go through the real commands:
segformer-check-data prints the per-band mean/std that the runs paste as data.mean / data.std,
then segformer-train fits MiT-B0 from scratch for the same steps with all 4 bands
(data.in_channels=4) and with the RGB bands only (data.bands=[0,1,2]); the validation mIoU
says whether the extra band is used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image
from short_runs import run, short_run_settings

from segformer.data.synthetic import SyntheticDataModule, generate

CLASSES = list(SyntheticDataModule.CLASSES)
SIZE = 64


def write_dataset(root: Path, counts: dict[str, int], seed: int = 0) -> None:
    for s, (split, n) in enumerate(counts.items()):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _, mask = generate(np.random.default_rng([seed, s, i, 0]), SIZE)
            decoy, _ = generate(np.random.default_rng([seed, s, i, 1]), SIZE)  # unrelated RGB
            rng = np.random.default_rng([seed, s, i, 2])
            nir = 6000 + 9000 * mask.astype(np.float64) + rng.normal(0, 3500, mask.shape)
            bands = np.dstack([decoy.astype(np.uint16) * 257, nir.clip(0, 65535).astype(np.uint16)])
            tifffile.imwrite(
                root / "images" / split / f"{i:04d}.tif",
                np.moveaxis(bands, -1, 0),
                photometric="minisblack",
            )
            Image.fromarray(mask).save(root / "masks" / split / f"{i:04d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train", type=int, default=240)
    parser.add_argument("--val", type=int, default=48)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/multiband.json"))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="multiband_"))
    data = work / "data"
    write_dataset(data, {"train": args.train, "val": args.val})
    env_python = sys.executable
    common = [
        "data=folder",
        f"data.root={data}",
        f"data.classes=[{','.join(CLASSES)}]",
        "data.max_value=65535",
    ]
    run(
        [env_python, "-m", "segformer.check_data", *common, "data.in_channels=4", "run_name=mb"],
        work,
    )
    report = (work / "logs" / "check_data" / "mb").glob("*/report.txt")
    text = next(iter(report)).read_text()
    stats = re.search(r"data\.mean=\[([^\]]+)\] data\.std=\[([^\]]+)\]", text)
    assert stats, text
    mean = [float(v) for v in stats[1].split(",")]
    std = [float(v) for v in stats[2].split(",")]
    train = [*common, *short_run_settings(SIZE, args.steps), "seed=0"]
    variants = {
        "4 bands (RGB + class band)": [
            "data.in_channels=4",
            f"data.mean=[{','.join(map(str, mean))}]",
            f"data.std=[{','.join(map(str, std))}]",
        ],
        "RGB bands only": [
            "data.in_channels=3",
            "data.bands=[0,1,2]",
            f"data.mean=[{','.join(map(str, mean[:3]))}]",
            f"data.std=[{','.join(map(str, std[:3]))}]",
        ],
    }
    results = {}
    for name, extra in variants.items():
        run_name = "mb4" if "4" in name else "mb3"
        start = time.perf_counter()
        command = [env_python, "-m", "segformer.train", *train, *extra, f"run_name={run_name}"]
        run(command, work)
        wall = time.perf_counter() - start
        metrics_file = next((work / "logs" / "train" / run_name).glob("*/metrics.json"))
        metrics = json.loads(metrics_file.read_text())
        results[name] = {
            "val_mIoU": round(metrics["val/mIoU"], 4),
            "val_mDice": round(metrics["val/mDice"], 4),
            "val_aAcc": round(metrics["val/aAcc"], 4),
            "val_IoU": {c: round(metrics.get(f"val/IoU/{c}", float("nan")), 4) for c in CLASSES},
            "wall_s": round(wall, 1),
            "command": "segformer-train "
            + " ".join([*train, *extra, f"run_name={run_name}"]).replace(str(data), "$DATA"),
        }
        print(name, results[name]["val_mIoU"], f"{wall:.0f} s", flush=True)
    out = {
        "what": __doc__.split("\n\n")[2].strip().replace("\n", " "),
        "date": str(date.today()),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "script": f"python benchmarks/multiband.py --steps {args.steps}",
        "dataset": {"train": args.train, "val": args.val, "size": SIZE, "classes": CLASSES},
        "check_data_mean_std": {"mean": mean, "std": std},
        "steps": args.steps,
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
