"""``precision=auto``: bf16 autocast only where it is actually faster on this machine.

On a CPU, bf16 autocast pays only with native bf16 arithmetic (AVX512-BF16 or AMX, used through
oneDNN when ATen dispatches at AVX512): elsewhere every bf16 op is emulated and a SegFormer
training step runs about 8.5x *slower* than in fp32 (measured on an AVX2-only CPU). With the
instructions present, a short measurement of the workload itself (fp32 vs bf16, a few runs)
decides, so a dispatch limited by ``ATEN_CPU_CAPABILITY`` / ``ONEDNN_MAX_CPU_ISA`` or a CPU where
bf16 does not win still gets fp32. On CUDA, bf16 where the GPU supports it.

Each measurement is kept per machine and workload in ``$XDG_CACHE_HOME/segformer/precision.json``
(``~/.cache`` by default): a speedup near the threshold would otherwise flip between runs, and
with it an eval's last digits or a rerun's weights. A resumed run keeps the precision it started
with.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

# the CPU flags that say what the vector units can do (Linux /proc/cpuinfo names)
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16")
BF16_SPEEDUP_NEEDED = 1.15  # bf16 must beat fp32 by this much to be chosen


@functools.cache
def cpu_info() -> dict[str, object]:
    """CPU model, ISA flags, ATen's dispatch level, threads: what every CPU time depends on."""
    model, flags = platform.processor() or "unknown", set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    else:  # no /proc (macOS, Windows): what torch can tell
        flags = {
            name
            for name, probe in [
                ("avx2", "_is_avx2_supported"),
                ("avx512f", "_is_avx512_supported"),
                ("avx512_bf16", "_is_avx512_bf16_supported"),
                ("amx_tile", "_is_amx_tile_supported"),
            ]
            if getattr(torch.cpu, probe, lambda: False)()
        }
    return {
        "model": model,
        "flags": [f for f in ISA_FLAGS if f in flags],
        "capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
    }


def cpu_class() -> str:
    """A short name for what CPU times depend on, e.g. "AVX512 + AMX-BF16" or "AVX2"."""
    info = cpu_info()
    native = [
        n
        for f, n in [("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")]
        if f in info["flags"]
    ]
    capability = str(info["capability"])
    if not capability.startswith("AVX512") or not native:
        return capability
    return f"{capability} + {native[0]}"


Probe = Callable[[bool], float]  # runs the workload once (bf16 autocast or not), returns seconds
Workload = tuple[str, Probe]  # (what it is, for the cache key and the reason; its probe)


def inference_probe(bf16: bool) -> float:
    """A B0 forward on two 256x256 images: the default workload to compare fp32 with bf16."""
    model, x = _probe_model(), torch.zeros(2, 3, 256, 256)
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model.forward_logits(x)
    return time.perf_counter() - start


@functools.cache
def _probe_model() -> torch.nn.Module:
    from segformer.models import SegFormer  # imported only when measuring

    return SegFormer("b0", num_classes=8).eval()


def bf16_speedup(probe: Probe = inference_probe, repeats: int = 3) -> float:
    """fp32 time / bf16-autocast time of ``probe`` (best of ``repeats`` after a warm-up each)."""
    with torch.random.fork_rng():  # leaves the caller's RNG stream where it was
        probe(False), probe(True)  # oneDNN builds its kernels on first use
        times: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(repeats):  # interleaved: a machine that gets busier slows both alike
            for bf16 in (False, True):
                times[bf16].append(probe(bf16))
    return min(times[False]) / min(times[True])


def speedup_cache() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "segformer" / "precision.json"


def measured_speedup(workload: Workload) -> tuple[float, str]:
    """(bf16 speedup of the workload's probe, where it comes from): measured once per machine
    (CPU, ISA limits, threads, torch) and workload, then read from :func:`speedup_cache`. An
    unreadable cache is measured over; one that cannot be written costs a measurement next time."""
    name, probe = workload
    path, key = speedup_cache(), json.dumps({**cpu_info(), "workload": name}, sort_keys=True)
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        entries = {}
    entries = entries if isinstance(entries, dict) else {}
    entry = entries.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("speedup"), int | float):
        return float(entry["speedup"]), f"measured {entry.get('date')}, kept in {path}"
    speedup = bf16_speedup(probe)
    entries[key] = {"speedup": round(speedup, 4), "date": datetime.date.today().isoformat()}
    try:  # written whole, then renamed: a process reading at the same time sees old or new
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(entries, indent=1) + "\n")
        tmp.replace(path)
    except OSError:
        return speedup, f"measured now; {path} not writable"
    return speedup, f"measured now, kept in {path}"


INFERENCE: Workload = ("B0 inference, 2x3x256x256", inference_probe)


def select_device(accelerator: str = "auto") -> torch.device:
    """The device a Lightning ``accelerator`` (auto | cpu | gpu | cuda) or a device name
    (``cuda:1``) runs on: auto is the GPU when there is one, else the CPU."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cuda" if accelerator == "gpu" else accelerator)


def choose_precision(accelerator: str = "auto", workload: Workload = INFERENCE) -> tuple[str, str]:
    """(Lightning precision, the reason) for ``precision=auto`` on ``accelerator``. ``workload``
    is measured (once, :func:`measured_speedup`) when the CPU has bf16 units."""
    if select_device(accelerator).type == "cuda":
        name = torch.cuda.get_device_name() if torch.cuda.is_available() else "the GPU"
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16-mixed", f"{name} supports bf16: bf16 autocast, fp32 weights"
        return "32-true", f"{name} has no bf16: fp32"
    info, cls = cpu_info(), cpu_class()
    if "+" not in cls:
        why = "no AVX512-BF16 / AMX" if info["capability"] != "AVX512" else "no bf16 units"
        return "32-true", f"CPU {cls} ({why}): bf16 would be emulated, several times slower: fp32"
    speedup, source = measured_speedup(workload)
    bf16 = speedup >= BF16_SPEEDUP_NEEDED
    return (
        "bf16-mixed" if bf16 else "32-true",
        f"CPU {cls}: bf16 autocast measured {speedup:.2f}x the speed of fp32 on this workload: "
        + ("bf16" if bf16 else f"fp32 (bf16 needs >= {BF16_SPEEDUP_NEEDED}x)")
        + f" ({workload[0]}: {source})",
    )


def resolve_precision(
    precision: str | int | None, accelerator: str = "auto", workload: Workload = INFERENCE
) -> tuple[str, str]:
    """``precision`` as given, or the choice of :func:`choose_precision` for "auto"."""
    if str(precision) != "auto":
        return str(precision), "set explicitly"
    return choose_precision(accelerator, workload)
