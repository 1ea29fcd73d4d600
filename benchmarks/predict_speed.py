"""segformer-predict on a folder against the loop a transformers user writes, per image.

    .venv/bin/python benchmarks/predict_speed.py [--images 12] [--size 512] [--rounds 2]
                                                 [--out benchmarks/results/predict_speed.json]

Both sides run the SAME weights (a random-init transformers B0 with 150 classes, loaded into
ours with ``SegFormer.from_pretrained``) on the same folder of JPEG scenes (the synthetic
shapes data at size x size).

- ours: ``segformer-predict ckpt_path=... input=... output=...`` (``python -m segformer.predict``)
  with its default outputs (class-id PNG, palette PNG, overlay JPEG), its default batch
  size and precision (auto: whatever this machine's choice is, recorded);
- theirs: for each file, PIL read, ImageNet normalisation, ``model(pixel_values).logits``,
  bilinear upsampling to the image size, argmax, one class-id PNG written with PIL.

Per-image time in steady state: each side runs on N and on 2N images, and (t(2N) - t(N)) / N is
the cost of one more image (model loading, start-up and warm-up cancel out). Rounds interleave
the sides (shared machines drift); medians. Writes a JSON file with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import machine, make_transformers_model

from segformer.data.synthetic import generate
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def write_images(folder: Path, count: int, size: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        image, _ = generate(rng, size)
        Image.fromarray(image).save(folder / f"{i:03d}.jpg", quality=90)


def run_ours(weights: Path, images: Path, out: Path, extra: list[str]) -> float:
    """The command itself, in a fresh process (its start-up cancels out in the difference)."""
    cmd = [sys.executable, "-m", "segformer.predict", f"ckpt_path={weights}", f"input={images}"]
    cmd += [f"output={out}", f"hydra.run.dir={out}_run", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def run_theirs(weights: Path, images: Path, out: Path, extra: list[str]) -> float:
    start = time.perf_counter()
    model = transformers.SegformerForSemanticSegmentation.from_pretrained(weights).eval()
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    out.mkdir(parents=True)
    with torch.no_grad():
        for path in sorted(images.iterdir()):
            rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")))
            x = ((rgb.float() - mean) / std).permute(2, 0, 1)[None]  # (1, 3, H, W)
            logits = model(pixel_values=x).logits
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
            ids = logits.argmax(1)[0].to(torch.uint8).numpy()
            Image.fromarray(ids).save(out / f"{path.stem}.png")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12, help="N: runs on N and 2N images")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--precision", help="ours: precision=... (default: the command's auto)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/predict_speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.device, args.compile = "cpu", False
    info = machine(args)
    times: dict[str, dict[int, list[float]]] = {"ours": {}, "theirs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_transformers_model("b0", root / "hf")
        for n in (args.images, 2 * args.images):
            write_images(root / f"in{n}", n, args.size)
        for r in range(args.rounds):
            for n in (args.images, 2 * args.images):
                for side, fn in (("ours", run_ours), ("theirs", run_theirs)):
                    extra = [f"precision={args.precision}"] if args.precision else []
                    seconds = fn(root / "hf", root / f"in{n}", root / f"{side}{n}_{r}", extra)
                    times[side].setdefault(n, []).append(seconds)
                    print(f"round {r} {side:6s} {n:3d} images: {seconds:.2f} s", flush=True)
    n = args.images
    per_image = {
        side: (statistics.median(t[2 * n]) - statistics.median(t[n])) / n * 1000
        for side, t in times.items()
    }
    ratio = per_image["theirs"] / per_image["ours"]
    precision = args.precision or f"auto: {info['precision_auto']['precision']}"
    print(
        f"per image, steady state ({info['cpu_class']}, ours at precision {precision}): ours "
        f"{per_image['ours']:.0f} ms, transformers loop {per_image['theirs']:.0f} ms: ours "
        f"{ratio:.2f}x faster"
    )
    record = {
        "machine": info,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "per_image_ms": per_image,
        "speedup": ratio,
        "raw_seconds": {s: {str(k): v for k, v in t.items()} for s, t in times.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
