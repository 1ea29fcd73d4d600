"""How far each path is from this machine's arithmetic floor, beside transformers and ONNX Runtime.

    .venv/bin/python benchmarks/floor.py [--size 512] [--repeats 5] [--quick]
                                         [--out benchmarks/results/floor_<cpu class>.json]

Per machine (issue 28):

- the measured GEMM peak: an n x n x n matmul (n = 2048), fp32 and bf16, all threads, median;
- the FLOPs of B0 ``forward_logits`` at size x size (torch's FlopCounterMode, which counts
  2 x MACs) and of a training step (forward + loss + backward), so the floor of a path is
  FLOPs / peak (fp32, and bf16 where the CPU has bf16 units);
- each path's median time, as a multiple of that floor, beside transformers'
  ``SegformerForSemanticSegmentation`` on the SAME weights (random init, 150 classes, written
  with ``save_pretrained`` and read with ``SegFormer.from_pretrained``; ours is also written back
  with ``save_pretrained_transformers``, which is what theirs loads) and beside the project's own
  ONNX export (``segformer.export.export_onnx``, classes=true: the class map in the graph;
  classes=false: logits, then bilinear upsampling and argmax in torch) in onnxruntime with every
  graph optimisation on, in the same run:

  * class-map inference at batch 1 and at batch 8 (per image); ours ``model.predict`` in fp32
    and under the precision ``precision=auto`` picks here (bf16 autocast or fp32);
  * the class-map step alone (logits at H/4 -> class map at H): ``upsample_argmax`` against
    ``F.interpolate(...).argmax(1)``, on the model's own logits;
  * predict per image: a loop that reads a JPEG, infers and writes a class-id PNG, through the
    project's predict code (``segformer.inference.segment``, what ``segformer-predict`` calls), a
    transformers loop (PIL, normalise, logits, upsample, argmax, PNG) and an onnxruntime loop;
  * a training step (batch 2, labels with an ignored band, fused AdamW): ours
    (``upsample_cross_entropy`` on ``forward_logits``) in fp32 and under precision auto, theirs
    ``model(pixel_values, labels).loss``; the first losses of both are recorded (same loss).

The process keeps freed memory as the entry points do (``segformer.allocator``; both sides get
it, SEGFORMER_MALLOC=default runs both with glibc's default malloc; recorded as
``freed_memory_kept``). Configurations are interleaved within every repeat (shared machines
drift); medians after warm-up. The load average at start and end is recorded: numbers taken on
a busy machine are only good for ratios within the run. ``--quick`` is a smoke run (tiny sizes,
one repeat).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import transformers
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import IGNORE, NUM_CLASSES, make_transformers_model, theirs_predict

from segformer.allocator import keep_freed_memory
from segformer.data.synthetic import generate
from segformer.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from segformer.inference import segment
from segformer.models import SegFormer, upsample_argmax, upsample_cross_entropy
from segformer.models.upsample import resize_bilinear
from segformer.precision import choose_precision, cpu_class, cpu_info


def median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def interleaved(runs: dict[str, Callable[[], object]], warmup: int, repeats: int) -> dict:
    """Median ms of each callable, the callables interleaved within every repeat."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: median_ms(t) for name, t in times.items()}


def gemm_peak(dtype: torch.dtype, n: int, repeats: int, budget_s: float = 20.0) -> float:
    """GFLOP/s of an n^3 matmul (2 n^3 FLOPs), all threads, median after a warm-up; repeats
    stop after ``budget_s`` (bf16 emulated on a CPU without bf16 units takes seconds a run)."""
    gen = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=gen).to(dtype) for _ in range(2))
    a @ b  # warm-up
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - begin < budget_s):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def conv_backward_flops(grad_out_shape, x_shape, w_shape, *args, **kwargs) -> int:
    """The input and weight gradients of a convolution cost what its forward does, each:
    2 x output elements x (C_in / groups) x kh x kw. torch's own formula ignores ``groups`` in
    the weight gradient, counting a depth-wise conv's as a dense one (C times too much: 92 of
    126 GFLOP counted in a B0 training step)."""
    output_mask = args[7]  # after bias, stride, padding, dilation, transposed, out padding, groups
    forward = 2 * math.prod(grad_out_shape) * math.prod(w_shape[1:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def count_flops(fn: Callable[[], object]) -> int:
    mapping = {torch.ops.aten.convolution_backward: conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return int(counter.get_total_flops())


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()


def onnx_sessions(model: SegFormer, folder: Path, size: int, threads: int) -> dict:
    """The project's ONNX export (classes true / false) in onnxruntime, all graph optimisations."""
    import onnxruntime as ort

    from segformer.export import export_onnx

    sessions = {}
    for classes in (True, False):
        path = folder / f"model_{'classes' if classes else 'logits'}.onnx"
        export_onnx(model, path, size=(size, size), classes=classes)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        sessions[classes] = ort.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    return sessions


def onnx_class_map(sessions: dict, x: np.ndarray, classes: bool) -> np.ndarray:
    out = sessions[classes].run(None, {"image": x})[0]
    if classes:
        return out
    logits = torch.from_numpy(out)  # a deploying user's post-processing, in torch
    return resize_bilinear(logits, x.shape[-2:]).argmax(1).numpy()


def bench_inference(ours, theirs, sessions, args, bf16_auto: bool) -> dict:
    """Class map per image (ms) at batch 1 and 8, every side; and the class-map step alone."""
    out, size = {}, (args.size, args.size)
    for batch in args.batches:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        xn = x.numpy()

        def ours_predict(bf16: bool, x=x):
            with torch.no_grad(), autocast(bf16):
                return ours.predict(x)

        def theirs_fp32(x=x):
            with torch.no_grad():
                return theirs_predict(theirs, x)

        runs = {
            "ours_fp32": lambda: ours_predict(False),
            "transformers_fp32": theirs_fp32,
            "onnxruntime_classes": lambda xn=xn: onnx_class_map(sessions, xn, True),
            "onnxruntime_logits_then_torch_argmax": lambda xn=xn: onnx_class_map(
                sessions, xn, False
            ),
        }
        if bf16_auto:
            runs["ours_precision_auto_bf16"] = lambda: ours_predict(True)
        with torch.no_grad():
            logits = ours.forward_logits(x)
        runs["ours_forward_logits_only"] = lambda x=x: ours_predict_logits(ours, x)
        runs["class_map_step_upsample_argmax"] = lambda lg=logits: upsample_argmax(lg, size)
        runs["class_map_step_reference"] = lambda lg=logits: resize_bilinear(lg, size).argmax(1)
        ms = interleaved(runs, args.warmup, args.repeats)
        with torch.no_grad():
            ref = resize_bilinear(logits, x.shape[-2:]).argmax(1)
            agree = {
                "upsample_argmax_vs_reference": _agree(upsample_argmax(logits, x.shape[-2:]), ref),
                "transformers_vs_ours": _agree(theirs_fp32(), ours_predict(False)),
                "onnxruntime_classes_vs_ours": _agree(
                    torch.from_numpy(onnx_class_map(sessions, xn, True)), ours_predict(False)
                ),
            }
        out[f"batch_{batch}"] = {
            "total_ms": ms,
            "per_image_ms": {k: v / batch for k, v in ms.items()},
            "class_map_agreement": agree,
        }
    return out


def ours_predict_logits(model, x):
    with torch.no_grad():
        return model.forward_logits(x)


def _agree(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.long() == b.long()).float().mean().item()


def write_images(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        image, _ = generate(rng, size)
        paths.append(folder / f"{i:03d}.jpg")
        Image.fromarray(image).save(paths[-1], quality=90)
    return paths


def bench_predict(ours, theirs, sessions, args, folder: Path, bf16_auto: bool) -> dict:
    """Read JPEG -> infer -> class-id PNG, per image (ms), each side over the same files."""
    paths = write_images(folder / "in", args.predict_images, args.size)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    (folder / "out").mkdir()

    def read(path: Path) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"))

    def write(ids: np.ndarray, path: Path, side: str) -> None:
        Image.fromarray(ids.astype(np.uint8)).save(folder / "out" / f"{side}_{path.stem}.png")

    def ours_loop(bf16: bool) -> None:
        for path in paths:
            with autocast(bf16):
                ids = segment(ours, read(path)[None])[0]
            write(ids, path, "ours")

    def theirs_loop() -> None:
        with torch.no_grad():
            for path in paths:
                rgb = torch.from_numpy(read(path))
                x = ((rgb.float() - mean) / std).permute(2, 0, 1)[None]
                write(theirs_predict(theirs, x)[0].numpy(), path, "theirs")

    def onnx_loop() -> None:
        for path in paths:
            rgb = torch.from_numpy(read(path))
            x = ((rgb.float() - mean) / std).permute(2, 0, 1)[None].contiguous().numpy()
            write(onnx_class_map(sessions, x, True)[0], path, "onnx")

    runs = {
        "ours_fp32": lambda: ours_loop(False),
        "transformers_fp32": theirs_loop,
        "onnxruntime_classes": onnx_loop,
    }
    if bf16_auto:
        runs["ours_precision_auto_bf16"] = lambda: ours_loop(True)
    ms = interleaved(runs, args.warmup, args.repeats)
    return {"per_image_ms": {k: v / len(paths) for k, v in ms.items()}, "images": len(paths)}


def bench_training(folder: Path, args, bf16_auto: bool) -> dict:
    """Step ms (batch 2): ours fp32 / precision auto, theirs; the same batch, the first losses."""
    gen = torch.Generator().manual_seed(2)
    size, batch = args.size, args.train_batch
    x = torch.randn(batch, 3, size, size, generator=gen)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen)
    y[:, : size // 8] = IGNORE
    models, optims, losses = {}, {}, {}
    sides = ["ours_fp32", "transformers_fp32"] + (["ours_precision_auto_bf16"] if bf16_auto else [])
    for side in sides:
        if side.startswith("transformers"):
            m = transformers.SegformerForSemanticSegmentation.from_pretrained(folder)
        else:
            m = SegFormer.from_pretrained(folder)
        models[side] = m.train()
        # fused AdamW on both sides: what this project's trainer (optimizer.fused: null) and
        # transformers' Trainer (optim="adamw_torch_fused" with torch >= 2.8) run
        optims[side] = torch.optim.AdamW(m.parameters(), lr=6e-5, weight_decay=0.01, fused=True)

    def step(side: str) -> None:
        model = models[side]
        if side.startswith("transformers"):
            loss = model(pixel_values=x, labels=y).loss
        else:
            with autocast(side.endswith("bf16")):
                logits = model.forward_logits(x)
            loss = upsample_cross_entropy(logits, y, IGNORE)
        losses.setdefault(side, loss.item())
        loss.backward()
        optims[side].step()
        optims[side].zero_grad(set_to_none=True)

    flops = count_flops(lambda: step("ours_fp32"))  # also the warm-up's first step
    ms = interleaved({s: (lambda s=s: step(s)) for s in sides}, args.warmup, args.repeats)
    optimizer = "AdamW(lr=6e-5, weight_decay=0.01, fused=True), both sides"
    return {
        "step_ms": ms,
        "first_loss": losses,
        "flops_per_step": flops,
        "batch": batch,
        "optimizer": optimizer,
    }


def machine(args) -> dict:
    info = cpu_info()
    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = None
    return {
        "cpu": info["model"],
        "cpu_class": cpu_class(),
        "cpu_info": info,
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "precision_auto": dict(zip(("precision", "reason"), choose_precision("cpu"), strict=True)),
    }


def multiples(record: dict) -> dict:
    """Every path's per-image time as a multiple of the floors, and transformers / ours."""
    floor = record["floor_ms_per_image"]
    out: dict = {}
    for batch, r in record["inference"].items():
        per = r["per_image_ms"]
        out[f"class_map_{batch}"] = {
            k: {"ms_per_image": round(v, 2), "x_fp32_floor": round(v / floor["fp32"], 2),
                "x_bf16_floor": round(v / floor["bf16"], 2),
                "transformers_over_this": round(per["transformers_fp32"] / v, 2)}
            for k, v in per.items()
        }  # fmt: skip
    per = record["predict"]["per_image_ms"]
    out["predict_per_image"] = {
        k: {"ms_per_image": round(v, 2), "x_fp32_floor": round(v / floor["fp32"], 2),
            "transformers_over_this": round(per["transformers_fp32"] / v, 2)}
        for k, v in per.items()
    }  # fmt: skip
    train = record["training"]
    step_floor = train["flops_per_step"] / (record["gemm_peak_gflops"]["fp32"] * 1e9) * 1e3
    out["training_step"] = {
        k: {"ms": round(v, 1), "x_fp32_floor": round(v / step_floor, 2),
            "transformers_over_this": round(train["step_ms"]["transformers_fp32"] / v, 2)}
        for k, v in train["step_ms"].items()
    }  # fmt: skip
    out["training_step_fp32_floor_ms"] = round(step_floor, 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--gemm-n", type=int, default=2048)
    parser.add_argument("--gemm-repeats", type=int, default=5)
    parser.add_argument("--predict-images", type=int, default=8)
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny sizes, 1 repeat")
    parser.add_argument("--out", type=Path, help="default benchmarks/results/floor_<class>.json")
    args = parser.parse_args()
    if args.quick:
        args.size, args.repeats, args.warmup, args.gemm_n, args.gemm_repeats = 64, 1, 0, 256, 1
        args.batches, args.predict_images = [1, 2], 2
    torch.set_num_threads(args.threads)
    # as the entry points do; transformers, in this process, gets the same allocator
    kept = keep_freed_memory()
    load_start = load_avg()
    info = {**machine(args), "freed_memory_kept": kept}
    bf16_auto = info["precision_auto"]["precision"].startswith("bf16")
    slug = re.sub(r"[^a-z0-9]+", "_", info["cpu_class"].lower()).strip("_")
    out_path = args.out or Path(f"benchmarks/results/floor_{slug}.json")
    print(f"{info['cpu']} ({info['cpu_class']}), {args.threads} threads, torch {info['torch']}, "
          f"freed memory kept {kept}, load {load_start}", flush=True)  # fmt: skip
    # without bf16 units bf16 is emulated (under 1 GFLOP/s a thread on AVX2): a smaller GEMM
    args.gemm_n_bf16 = args.gemm_n if "+" in info["cpu_class"] else min(args.gemm_n, 1024)
    peak = {
        "fp32": gemm_peak(torch.float32, args.gemm_n, args.gemm_repeats),
        "bf16": gemm_peak(torch.bfloat16, args.gemm_n_bf16, args.gemm_repeats),
    }
    print(f"GEMM peak: fp32 {peak['fp32']:.0f} GFLOP/s ({args.gemm_n}^3), bf16 "
          f"{peak['bf16']:.1f} GFLOP/s ({args.gemm_n_bf16}^3)", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_transformers_model("b0", folder / "hf")
        ours = SegFormer.from_pretrained(folder / "hf").eval()
        ours.save_pretrained_transformers(folder / "ours_hf")  # what transformers loads here
        theirs = transformers.SegformerForSemanticSegmentation.from_pretrained(folder / "ours_hf")
        theirs.eval()
        x1 = torch.zeros(1, 3, args.size, args.size)
        with torch.no_grad():
            flops = count_flops(lambda: ours.forward_logits(x1))
        floor = {"fp32": flops / (peak["fp32"] * 1e9) * 1e3,
                 "bf16": flops / (peak["bf16"] * 1e9) * 1e3}  # fmt: skip
        print(f"B0 forward_logits at {args.size}: {flops / 1e9:.2f} GFLOP; floor fp32 "
              f"{floor['fp32']:.1f} ms, bf16 {floor['bf16']:.1f} ms", flush=True)  # fmt: skip
        sessions = onnx_sessions(ours, folder, args.size, args.threads)
        inference = bench_inference(ours, theirs, sessions, args, bf16_auto)
        print("inference done", flush=True)
        predict = bench_predict(ours, theirs, sessions, args, folder / "predict", bf16_auto)
        print("predict done", flush=True)
        training = bench_training(folder / "ours_hf", args, bf16_auto)
    record = {
        "machine": {**info, "load_avg_start": load_start, "load_avg_end": load_avg()},
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "gemm_peak_gflops": peak,
        "forward_logits_flops_per_image": flops,
        "floor_ms_per_image": floor,
        "inference": inference,
        "predict": predict,
        "training": training,
    }
    record["multiples"] = multiples(record)
    print(json.dumps(record["multiples"], indent=1))
    print(f"load average start {load_start}, end {record['machine']['load_avg_end']}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
