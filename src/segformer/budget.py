"""Time-budgeted training: fit a run into ``budget.minutes`` of wall time on this machine.

Before ``fit``, a short calibration times real training steps (a copy of the model on real
batches from the training loader, data loading included) and a validation pass, then fixes the
run: ``max_steps`` (the config's value becomes an upper bound) and ``val_check_interval`` (the
``budget.validations`` validations spread evenly, the last at the final step). The LR schedule
is built from that ``max_steps``, so warmup + poly decay end exactly there. The plan is stored in
every checkpoint; ``ckpt_path=last`` continues it instead of calibrating again, so a resumed run
is the uninterrupted one. Calibration runs in a forked RNG and its own data loader, leaving the
training run's random streams and sample order untouched. If the machine gets slower after the
calibration, ``callbacks.BudgetGuard`` ends the run early, validated, within the budget.
"""

from __future__ import annotations

import copy
import io
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from segformer.errors import InputError
from segformer.inference import InferenceConfig, predict_classes

PER_VALIDATION_OVERHEAD_S = 1.0  # prediction grid, learning curve, per-class table
MARGIN = 0.05  # Lightning's per-step work (logging, progress bar), timing noise, a busier machine
EXIT_SECONDS = 3.0  # after the last step: the final checkpoint write and process exit
_IMPORTED = time.monotonic()


def budget_clock(from_process_start: bool) -> Callable[[], float]:
    """Seconds a budget has used so far: since this process started (the command line:
    interpreter start-up and imports included), or since this call (``train()`` from Python,
    a notebook or a test, where the process may be much older than the run)."""
    if from_process_start:
        return seconds_since_start
    start = time.monotonic()
    return lambda: time.monotonic() - start


def seconds_since_start() -> float:
    """Wall time since this process started (interpreter start-up and imports included); where
    /proc is missing, since this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


@dataclass(frozen=True)
class BudgetPlan:
    minutes: float
    max_steps: int
    val_check_interval: int
    step_seconds: float  # one training step, data loading included
    validation_seconds: float  # one validation pass, checkpoint writes included
    calibrated_at_seconds: float  # wall time since start-up when the plan was made

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class StepTimer:
    """Times training steps of a copy of ``module`` on the real training batches."""

    def __init__(self, module: Any, datamodule: Any, device: torch.device) -> None:
        self.device = device
        self.module = copy.deepcopy(module).to(device).train()
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=1e-6)
        datamodule.setup("fit")
        self.loader = datamodule.train_dataloader()
        self.batches = iter(self.loader)

    def _batch(self) -> dict[str, Any]:
        try:
            return next(self.batches)
        except StopIteration:  # a tiny training set: start over
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self, bf16: bool) -> float:
        """Seconds for one step (batch fetch, forward, loss, backward, AdamW) in fp32 or bf16."""
        start = time.perf_counter()
        batch = self._batch()
        images, masks = batch["image"].to(self.device), batch["mask"].to(self.device)
        dtype = torch.bfloat16 if bf16 else None
        with torch.autocast(self.device.type, dtype=dtype, enabled=bf16):
            loss = self.module.loss(self.module.model.forward_logits(images), masks)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def steady_step(self, bf16: bool, steps: int = 6) -> float:
        """Seconds per step in steady state: the mean over ``steps`` consecutive steps, timed
        once the batches the loader prefetched are used up. Timing earlier hands the steps
        batches loaded for free and misses data loading, which shares the CPU with the step
        (on 2 cores it made a CamVid step look 0.46 s when the run took 0.7 s)."""
        workers = self.loader.num_workers
        prefetched = workers * (self.loader.prefetch_factor or 2) if workers else 0
        for _ in range(2 + prefetched):  # workers starting, kernels being built, buffer drained
            self.step(bf16)
        start = time.perf_counter()
        for _ in range(steps):
            self.step(bf16)
        return (time.perf_counter() - start) / steps


def checkpoint_seconds(module: Any) -> float:
    """Time to serialise a checkpoint-sized dict (weights + two AdamW moments)."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    blob = {"state_dict": state, "exp_avg": state, "exp_avg_sq": state}
    start = time.perf_counter()
    torch.save(blob, io.BytesIO())
    return time.perf_counter() - start


def validation_seconds(
    module: Any,
    datamodule: Any,
    device: torch.device,
    bf16: bool,
    limit_batches: int | float | None = None,
    timed_batches: int = 2,
) -> tuple[float, float]:
    """(seconds for one validation pass, seconds per validation batch), from timing the first
    ``timed_batches`` batches of the validation loader with the module's inference settings."""
    loader = datamodule.val_dataloader()
    total = len(loader)
    if isinstance(limit_batches, int):
        total = min(total, limit_batches)
    elif isinstance(limit_batches, float):
        total = int(total * limit_batches)
    model = copy.deepcopy(module.model).to(device).eval()
    cfg: InferenceConfig = module.inference
    times = []
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i, batch in enumerate(loader):
            if i > timed_batches or i >= total:
                break
            start = time.perf_counter()
            images = batch["image"].to(device)
            predict_classes(model, images, cfg, batch["mask"].shape[-2:])
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i > 0 or total == 1:  # the first batch pays for worker start-up
                times.append(time.perf_counter() - start)
    per_batch = statistics.median(times) if times else 0.0
    return per_batch * total, per_batch


def plan_budget(
    minutes: float,
    elapsed: float,
    step_seconds: float,
    validation_seconds: float,
    checkpoint_seconds: float,
    validations: int,
    max_steps: int,
    checkpoint_every: int | None = None,
    sanity_seconds: float = 0.0,
) -> BudgetPlan:
    """The most steps that fit: ``elapsed`` seconds are spent already, each of ``validations``
    validations costs its pass, two checkpoint writes and the callbacks' pictures; the steps are
    a multiple of the validation interval so that the last validation sees the final weights."""
    validations = max(1, int(validations))
    per_validation = validation_seconds + 2 * checkpoint_seconds + PER_VALIDATION_OVERHEAD_S
    left = (minutes * 60.0 - elapsed - EXIT_SECONDS) * (1.0 - MARGIN)
    left -= validations * per_validation
    left -= sanity_seconds + checkpoint_seconds  # the sanity check and the final save
    steps = max(0, math.floor(left / step_seconds))
    if checkpoint_every:  # periodic last.ckpt writes between validations
        left -= steps // checkpoint_every * checkpoint_seconds
        steps = max(0, math.floor(left / step_seconds))
    if max_steps > 0:  # the configured steps bound a budgeted run (-1: epochs decide, no bound)
        steps = min(steps, max_steps)
    interval = steps // validations
    if interval < 1:
        raise InputError(
            f"budget.minutes={minutes:g} leaves {max(left, 0.0):.0f} s for training after start-up "
            f"({elapsed:.0f} s) and {validations} validations ({per_validation:.1f} s each): "
            f"fewer steps than validations at {step_seconds:.2f} s a step. Raise budget.minutes "
            "or lower budget.validations"
        )
    return BudgetPlan(
        minutes=float(minutes),
        max_steps=interval * validations,
        val_check_interval=interval,
        step_seconds=step_seconds,
        validation_seconds=per_validation,
        calibrated_at_seconds=elapsed,
    )
