"""Speed and memory of this SegFormer against transformers' SegformerForSemanticSegmentation.

    .venv/bin/python benchmarks/speed.py [--variants b0 b2] [--size 512] [--repeats 10]
                                         [--out benchmarks/results/speed.json]    # or: make bench

Both sides run the SAME weights: a random-init transformers model with the paper's config
(150 classes) is saved with ``save_pretrained`` and loaded into ours with
``SegFormer.from_pretrained``. Two fixed input images: "noise" (white noise) and "scene" (a
synthetic-shapes scene). Their cost does not depend on the image; ours does in the last step
(upsample + argmax works only near class boundaries), and random weights put boundaries almost
everywhere: white noise is the worst case, a trained model on a real image is far kinder.

- inference, batch 1, to the class map at the input size: ours ``model.predict(x)``; theirs as
  its users call it, ``model(pixel_values=x).logits``, then bilinear upsampling to the input size
  (align_corners=False) and argmax (what ``post_process_semantic_segmentation`` does). fp32 and
  under ``torch.autocast(device, dtype=torch.bfloat16)``, both under ``torch.no_grad()``. The
  configurations are interleaved within every repeat (noisy shared machines drift), medians.
- training step, batch 2, size x size crops, labels with an ignored band: forward, loss = mean
  cross-entropy of the logits upsampled to the label size (theirs: ``model(pixel_values,
  labels).loss``, which does exactly that; ours: ``upsample_cross_entropy`` on
  ``forward_logits``, the same function in bands; "ours, plain loss": F.interpolate +
  F.cross_entropy), backward, AdamW step. Each configuration runs in a fresh spawned process
  (all import torch and transformers, so their baselines match), in interleaved rounds; its
  peak RSS (ru_maxrss) is the peak memory.
- both sides keep freed memory as the entry points do (``segformer.allocator``; without it most
  of transformers' training step is page faults); SEGFORMER_MALLOC=default turns it off.
- parity: max |logits ours - theirs| (fp32, at H/4) and the share of equal class-map pixels.

Prints a table and writes a JSON file with the machine (CPU, cores, versions, date).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from rich.console import Console
from rich.table import Table

from segformer.allocator import keep_freed_memory
from segformer.data.synthetic import SyntheticDataModule
from segformer.models import VARIANTS, SegFormer, upsample_cross_entropy
from segformer.precision import choose_precision, cpu_class, cpu_info

NUM_CLASSES = 150
IGNORE = 255


def make_transformers_model(variant: str, folder: Path) -> None:
    """Random-init transformers SegFormer with the paper's config, saved with save_pretrained."""
    spec = VARIANTS[variant]
    config = transformers.SegformerConfig(
        hidden_sizes=list(spec.embed_dims),
        depths=list(spec.depths),
        num_attention_heads=list(spec.num_heads),
        sr_ratios=list(spec.sr_ratios),
        decoder_hidden_size=spec.decoder_dim,
        num_labels=NUM_CLASSES,
    )
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.SegformerForSemanticSegmentation(config).save_pretrained(folder)


def load(impl: str, folder: Path) -> torch.nn.Module:
    if impl == "theirs":
        return transformers.SegformerForSemanticSegmentation.from_pretrained(folder)
    return SegFormer.from_pretrained(folder)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def theirs_predict(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(pixel_values=x).logits
    logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits.argmax(1)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def scene_image(size: int) -> torch.Tensor:
    """A synthetic-shapes scene (the embedded data set's first val image), normalised."""
    data = SyntheticDataModule(num_val=1, image_size=size, num_workers=0)
    return data.dataset("val", train=False)[0]["image"][None]  # (1, 3, size, size)


def parity(ours: torch.nn.Module, theirs: torch.nn.Module, x: torch.Tensor) -> dict:
    with torch.no_grad():
        ours_logits, theirs_logits = ours.forward_logits(x), theirs(pixel_values=x).logits
        ours_map, theirs_map = ours.predict(x), theirs_predict(theirs, x)
        with autocast(x.device, "bf16"):
            ours_bf16, theirs_bf16 = ours.predict(x), theirs_predict(theirs, x)
    return {
        "logits_max_abs_diff": (ours_logits - theirs_logits).abs().max().item(),
        "logits_max_abs": theirs_logits.abs().max().item(),
        "class_map_agreement": (ours_map == theirs_map).float().mean().item(),
        "bf16_vs_fp32_agreement": {
            "ours": (ours_bf16 == ours_map).float().mean().item(),
            "theirs": (theirs_bf16 == theirs_map).float().mean().item(),
        },
    }


def bench_inference(args: argparse.Namespace, folder: Path) -> dict:
    """Latency to the class map (ms) per image, precision and side, interleaved repeats."""
    device = torch.device(args.device)
    ours, theirs = load("ours", folder).to(device), load("theirs", folder).to(device).eval()
    if args.compile:
        ours.compile()
    noise = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    images = {"noise": noise, "scene": scene_image(args.size)}
    images = {name: images[name].to(device) for name in args.images}
    predicts = {"ours": lambda x: ours.predict(x), "theirs": lambda x: theirs_predict(theirs, x)}
    runs = [(i, p, s) for i in images for p in ("fp32", "bf16") for s in ("ours", "theirs")]
    times = {i: {p: {s: [] for s in predicts} for p in ("fp32", "bf16")} for i in images}
    for repeat in range(args.warmup + args.repeats):
        for image, precision, side in runs:
            with torch.no_grad(), autocast(device, precision):
                sync(device)
                start = time.perf_counter()
                predicts[side](images[image])
                sync(device)
            if repeat >= args.warmup:
                times[image][precision][side].append((time.perf_counter() - start) * 1e3)
    return {
        "parity": {name: parity(ours, theirs, x) for name, x in images.items()},
        "inference_ms": times,
    }


def train_worker(impl: str, folder: str, args: dict, queue: mp.Queue) -> None:
    """One training configuration in a fresh process: step times and peak RSS."""
    keep_freed_memory()
    torch.set_num_threads(args["threads"])
    device = torch.device(args["device"])
    model = load("theirs" if impl == "theirs" else "ours", Path(folder)).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01)
    gen = torch.Generator().manual_seed(2)
    size, batch = args["size"], args["batch"]
    x = torch.randn(batch, 3, size, size, generator=gen).to(device)
    y = torch.randint(0, NUM_CLASSES, (batch, size, size), generator=gen)
    y[:, : size // 8] = IGNORE  # an ignored band, as padding leaves
    y = y.to(device)

    def step() -> None:
        if impl == "theirs":
            loss = model(pixel_values=x, labels=y).loss
        elif impl == "ours":
            loss = upsample_cross_entropy(model.forward_logits(x), y, IGNORE)
        else:  # ours, plain loss
            logits = F.interpolate(
                model.forward_logits(x), size=y.shape[-2:], mode="bilinear", align_corners=False
            )
            loss = F.cross_entropy(logits, y, ignore_index=IGNORE)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times = []
    for i in range(args["warmup"] + args["steps"]):
        sync(device)
        start = time.perf_counter()
        step()
        sync(device)
        if i >= args["warmup"]:
            times.append((time.perf_counter() - start) * 1e3)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None
    queue.put({"step_ms": times, "peak_rss_mb": peak, "rss_before_mb": rss_before,
               "cuda_peak_mb": cuda_peak})  # fmt: skip


def bench_training(args: argparse.Namespace, folder: Path) -> dict:
    """Step times (ms) and peak RSS (MB) per side, each run in fresh processes, interleaved."""
    ctx = mp.get_context("spawn")
    settings = {
        "threads": args.threads,
        "device": args.device,
        "size": args.size,
        "batch": args.train_batch,
        "warmup": 1,
        "steps": args.train_steps,
    }
    sides = ["ours", "theirs"] + (["ours_plain_loss"] if args.plain_loss else [])
    runs: dict = {side: [] for side in sides}
    for _ in range(args.train_rounds):
        for side in sides:
            queue = ctx.Queue()
            proc = ctx.Process(target=train_worker, args=(side, str(folder), settings, queue))
            proc.start()
            runs[side].append(queue.get())
            proc.join()
    return {
        side: {
            "step_ms": [t for out in outs for t in out["step_ms"]],
            "peak_rss_mb": max(out["peak_rss_mb"] for out in outs),
            "rss_before_mb": max(out["rss_before_mb"] for out in outs),
            "cuda_peak_mb": outs[0]["cuda_peak_mb"] and max(out["cuda_peak_mb"] for out in outs),
        }
        for side, outs in runs.items()
    }


def machine(args: argparse.Namespace) -> dict:
    """What every time here depends on: CPU model, ISA flags, ATen's dispatch level (lowered by
    ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA to measure another CPU class), threads, versions,
    and what precision=auto picks on this machine."""
    cpu = cpu_info()
    info = {
        "cpu": cpu["model"],
        "cpu_class": cpu_class(),
        "isa_flags": cpu["flags"],
        "cpu_capability": cpu["capability"],
        "onednn_max_cpu_isa": cpu["onednn_max_cpu_isa"],
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "device": args.device,
        "precision_auto": dict(
            zip(("precision", "reason"), choose_precision(args.device), strict=True)
        ),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.date.today().isoformat(),
    }
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def summarize(results: dict) -> dict:
    """Medians and ratios: speed-ups are theirs / ours (> 1: ours faster), memory ours / theirs."""
    summary = {}
    for variant, r in results.items():
        s: dict = {"inference_median_ms": {}, "inference_speedup": {}}
        for image, by_precision in r["inference_ms"].items():
            med = {
                p: {k: statistics.median(v) for k, v in d.items()} for p, d in by_precision.items()
            }
            s["inference_median_ms"][image] = med
            s["inference_speedup"][image] = {
                "fp32": med["fp32"]["theirs"] / med["fp32"]["ours"],
                "bf16": med["bf16"]["theirs"] / med["bf16"]["ours"],
                "ours_bf16_vs_theirs_fp32": med["fp32"]["theirs"] / med["bf16"]["ours"],
            }
        if "training" in r:
            train = r["training"]
            s["train_step_median_ms"] = {
                k: statistics.median(v["step_ms"]) for k, v in train.items()
            }
            s["train_peak_rss_mb"] = {k: v["peak_rss_mb"] for k, v in train.items()}
            step, rss = s["train_step_median_ms"], s["train_peak_rss_mb"]
            s["train_speedup"] = {k: step["theirs"] / v for k, v in step.items() if k != "theirs"}
            s["train_peak_rss_ratio"] = {
                k: v / rss["theirs"] for k, v in rss.items() if k != "theirs"
            }
        summary[variant] = s
    return summary


def table(results: dict, summary: dict, info: dict, size: int) -> Table:
    t = Table(
        title=f"SegFormer vs transformers {info['transformers']} at {size}x{size} "
        f"({info['cpu']}, {info['cpu_class']}, {info['threads']} threads, torch {info['torch']}, "
        f"{info['date']}; precision=auto: {info['precision_auto']['precision']})"
    )
    for col in ("model", "measure", "ours", "transformers", "ours better by"):
        t.add_column(col, justify="left" if col in ("model", "measure") else "right")
    for variant, r in results.items():
        s, name = summary[variant], f"B{variant[1:]}"

        def row(measure: str, ours: str, theirs: str = "", ratio: str = "") -> None:
            t.add_row(name, measure, ours, theirs, ratio)  # noqa: B023 (called right away)

        for image, med in s["inference_median_ms"].items():
            speedup = s["inference_speedup"][image]
            for p in ("fp32", "bf16"):
                ours, theirs = med[p]["ours"], med[p]["theirs"]
                row(f"inference {p}, {image} (ms)", f"{ours:.0f}", f"{theirs:.0f}",
                    f"{speedup[p]:.2f}x")  # fmt: skip
            row(f"ours bf16 vs their fp32, {image}", "", "",
                f"{speedup['ours_bf16_vs_theirs_fp32']:.2f}x")  # fmt: skip
        if "train_step_median_ms" in s:
            step, rss = s["train_step_median_ms"], s["train_peak_rss_mb"]
            for side, label in [("ours", ""), ("ours_plain_loss", ", plain loss")]:
                if side in step:
                    row(f"train step{label} (ms)", f"{step[side]:.0f}", f"{step['theirs']:.0f}",
                        f"{s['train_speedup'][side]:.2f}x")  # fmt: skip
                    row(f"train peak RSS{label} (MB)", f"{rss[side]:.0f}", f"{rss['theirs']:.0f}",
                        f"{s['train_peak_rss_ratio'][side]:.2f} of it")  # fmt: skip
        for image, par in r["parity"].items():
            row(f"logits max |diff|, {image}", f"{par['logits_max_abs_diff']:.1e}",
                f"max |logit| {par['logits_max_abs']:.2f}")  # fmt: skip
            row(f"class maps agree, {image}", f"{par['class_map_agreement']:.4%}")
        t.add_section()
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b2"], choices=list(VARIANTS))
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10, help="timed inference repeats")
    parser.add_argument(
        "--images", nargs="+", default=["noise", "scene"], choices=["noise", "scene"]
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--train-steps", type=int, default=3, help="timed steps per process")
    parser.add_argument("--train-rounds", type=int, default=2, help="processes per config")
    parser.add_argument("--train-batch", type=int, default=2)
    parser.add_argument("--no-train", dest="train", action="store_false")
    parser.add_argument("--plain-loss", action="store_true", help="also ours with F.interpolate+CE")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="torch.compile ours (inference)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/speed.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 120)
    info = {**machine(args), "freed_memory_kept": keep_freed_memory()}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            folder = Path(tmp) / variant
            make_transformers_model(variant, folder)
            console.log(f"{variant}: inference")
            results[variant] = bench_inference(args, folder)
            if args.train:
                console.log(f"{variant}: training")
                results[variant]["training"] = bench_training(args, folder)
    summary = summarize(results)
    console.print(table(results, summary, info, args.size))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"machine": info, "settings": settings, "summary": summary, "raw": results}
    args.out.write_text(json.dumps(record, indent=2))
    console.log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
