"""Peak memory and time of tiled raster prediction (segformer-predict on a GeoTIFF) by raster size.

    nice -n 19 .venv/bin/python benchmarks/raster_memory.py [--sizes 5000 20000] [--classes 6]
        [--crop 1024] [--stride 768] [--batch 1] [--workdir /tmp/raster_memory]
        [--out benchmarks/results/raster_memory.json]

For each size S: a synthetic S x S 3-band uint8 GeoTIFF (tiled 512 x 512, deflate, a UTM CRS
and a 0.3 m transform) is written window by window (512 rows at a time, never whole in memory),
then ``python -m segformer.predict`` runs on it in a child process, with a SegFormer-B0 of random
weights (seed 0, ``--classes`` classes: memory and time do not depend on the weights, the
predictions mean nothing), fp32, the default tiled settings on a CPU (crop 1024, stride 768,
one window per forward: tiled.window_batch=auto). The child's peak RSS is its ``ru_maxrss``
(os.wait4); its RSS is also sampled every second (/proc/<pid>/status VmRSS) to show it does not
grow along the raster. The output is checked: its CRS and transform equal the input's, it is
tiled and deflate-compressed, the palette is its colour map. Writes one JSON file with the
machine (CPU model, ISA flags, ATen's dispatch level), torch and GDAL versions.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from segformer.models import SegFormer
from segformer.precision import cpu_class, cpu_info
from segformer.raster import TiledConfig, TilePlan

ROOT = Path(__file__).resolve().parents[1]
CRS = "EPSG:32632"
TRANSFORM = Affine(0.3, 0.0, 350_000.0, 0.0, -0.3, 5_600_000.0)


def write_synthetic(path: Path, size: int, rows: int = 512) -> float:
    """An S x S RGB uint8 GeoTIFF of smooth 'fields' plus noise, written ``rows`` at a time."""
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS,
        "transform": TRANSFORM,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "bigtiff": "IF_SAFER",
    }
    x = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as dst:
        for row0 in range(0, size, rows):
            h = min(rows, size - row0)
            y = np.arange(row0, row0 + h, dtype=np.float32)[:, None]
            strip = np.empty((3, h, size), np.uint8)
            for band, (fy, fx, phase) in enumerate([(211, 307, 0), (389, 173, 1), (97, 541, 2)]):
                field = 128 + 60 * np.sin(y / fy + phase) * np.cos(x / fx - phase)
                noise = rng.integers(-12, 13, (h, size), dtype=np.int16)
                strip[band] = np.clip(field + noise, 0, 255)
            dst.write(strip, window=Window(0, row0, size, h))
    return time.perf_counter() - start


def sample_rss(pid: int, samples: list[tuple[float, int]], stop: threading.Event) -> None:
    start = time.perf_counter()
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    samples.append((time.perf_counter() - start, int(line.split()[1])))
        except OSError:
            return
        stop.wait(1.0)


def run_predict(weights: Path, source: Path, out: Path, args: argparse.Namespace) -> dict:
    """segformer-predict in a child process: wall time, peak RSS (wait4), sampled RSS."""
    cmd = [
        sys.executable, "-m", "segformer.predict", f"ckpt_path={weights}", f"input={source}",
        f"output={out}", f"hydra.run.dir={out}_run", "precision=32-true", "device=cpu",
        "tiled.enabled=true", f"inference.crop={args.crop}", f"inference.stride={args.stride}",
        f"tiled.window_batch={args.batch}",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "COLUMNS": "120"}
    log = (out.parent / f"{out.name}.log").open("w")
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    sampler = threading.Thread(target=sample_rss, args=(child.pid, samples, stop), daemon=True)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    log.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{cmd} failed; see {log.name}")
    child.returncode = os.waitstatus_to_exitcode(status)
    rss = [kib for _, kib in samples]
    quarters = [max(rss[len(rss) * q // 4 : len(rss) * (q + 1) // 4] or [0]) for q in range(4)]
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # KiB on Linux
        "sampled_rss_max_mib_by_quarter_of_the_run": [round(k / 1024, 1) for k in quarters],
        "rss_samples": len(rss),
        "user_cpu_s": round(usage.ru_utime, 1),
        "command": " ".join(cmd[1:]),
    }


def check_output(source: Path, target: Path, classes: int) -> dict:
    with rasterio.open(source) as src, rasterio.open(target) as out:
        colormap = out.colormap(1)
        return {
            "crs_equal": out.crs == src.crs,
            "transform_equal": out.transform == src.transform,
            "size_equal": (out.width, out.height) == (src.width, src.height),
            "tiled": bool(out.profile.get("tiled")),
            "block_shape": list(out.block_shapes[0]),
            "compression": out.compression.value if out.compression else None,
            "colormap_classes": sum(1 for i in range(classes) if colormap[i][3] == 255),
            "output_mib": round(target.stat().st_size / 2**20, 1),
        }


def machine(threads: int) -> dict:
    info = cpu_info()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(
            (line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line),
            info["model"],
        )
    except OSError:
        model = info["model"]
    return {
        "cpu": model,
        "cpu_class": cpu_class(),
        "isa_flags": info["flags"],  # of avx2, avx512f, avx512_bf16, amx_bf16, amx_tile, ...
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": os.cpu_count(),
        "threads": threads,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch": torch.__version__,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "python": platform.python_version(),
        "date": datetime.date.today().isoformat(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--crop", type=int, default=1024)
    parser.add_argument("--stride", type=int, default=768)
    parser.add_argument("--batch", type=int, default=1, help="tiled.window_batch (auto: 1 on CPU)")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/raster_memory"))
    parser.add_argument("--keep", action="store_true", help="keep the rasters")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "raster_memory.json"
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    weights = args.workdir / "b0_random.pt"
    torch.save(SegFormer("b0", num_classes=args.classes).state_dict(), weights)
    cfg = TiledConfig(crop=args.crop, stride=args.stride, window_batch=args.batch)
    results = {
        "what": (
            "segformer-predict tiled.enabled=true on a synthetic S x S 3-band uint8 GeoTIFF "
            "(tiled 512, deflate), SegFormer-B0 with RANDOM weights (memory and time only), fp32, "
            "CPU; peak RSS = ru_maxrss of the predict process (os.wait4)"
        ),
        "model": {"variant": "b0", "num_classes": args.classes, "weights": "random (seed 0)"},
        "tiles": {
            "crop": args.crop,
            "stride": args.stride,
            "window_batch": args.batch,
            "buffer_mb": cfg.buffer_mb,
            "output_block": cfg.block_size,
        },
        "machine": machine(args.threads),
        "runs": {},
    }
    for size in args.sizes:
        source, out = args.workdir / f"synthetic_{size}.tif", args.workdir / f"out_{size}"
        shutil.rmtree(out, ignore_errors=True)
        made = write_synthetic(source, size)
        plan = TilePlan.build(size, size, cfg, args.classes)
        print(
            f"{size} x {size}: input written in {made:.0f} s, {plan.windows()} windows", flush=True
        )
        run = run_predict(weights, source, out, args)
        run |= {
            "pixels": size * size,
            "input_mib": round(source.stat().st_size / 2**20, 1),
            "input_written_s": round(made, 1),
            "windows": plan.windows(),
            "window_grid": [len(plan.ys), len(plan.xs)],
            "column_bands": [list(b) for b in plan.bands],
            "seconds_per_window": round(run["seconds"] / plan.windows(), 2),
            "output": check_output(source, out / f"synthetic_{size}.tif", args.classes),
        }
        results["runs"][f"{size}x{size}"] = run
        print(json.dumps(run, indent=1), flush=True)
        if not args.keep:
            source.unlink()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")  # after each size
    peaks = [r["peak_rss_mib"] for r in results["runs"].values()]
    results["peak_rss_mib_max"] = max(peaks)
    results["under_2_gib"] = max(peaks) < 2048
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"peak RSS {peaks} MiB -> {args.out}")


if __name__ == "__main__":
    main()
