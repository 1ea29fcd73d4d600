"""The paper's optimisation recipe: AdamW parameter groups and the warmup + poly schedule, and
any other schedule built from its config."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from segformer.errors import InputError


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    no_decay_bias: bool = False,
    head_prefix: str = "head.",
) -> list[dict[str, Any]]:
    """Split parameters as the official configs do (mmcv ``paramwise_cfg``), for any network
    whose decoder is the ``head`` attribute (``models.network.EncoderDecoder``).

    ``head``: lr x head_lr_mult (everything in the decoder, its BatchNorm included, keeps weight
    decay, since the official key match ``head`` wins over ``norm``); the encoder's
    normalisation layers (LayerNorm in MiT; BatchNorm, GroupNorm ... in others): no weight
    decay. ``no_decay_bias`` also exempts every other bias.
    """
    norms = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, norms) for p in m.parameters(recurse=False)
    }
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_head = name.startswith(head_prefix)
        decay = not (
            (not is_head and id(p) in norm_params) or (no_decay_bias and name.endswith(".bias"))
        )
        groups.setdefault((is_head, decay), []).append(p)
    return [
        {
            "name": f"{'head' if is_head else 'encoder'}{'' if decay else '_no_decay'}",
            "params": params,
            "lr": lr * (head_lr_mult if is_head else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
        }
        for (is_head, decay), params in sorted(groups.items())
    ]


def fused_setting(factory: Any, settings: dict[str, Any], fp16_clipping: bool) -> dict[str, Any]:
    """Resolve ``fused: null`` (configs/optimizer/adamw.yaml): torch's fused kernel where the
    optimizer has one (AdamW's step for B0 on a 2-core AVX2 CPU 26 -> 5 ms, measured; the same
    weights to 6e-8 after 5 steps), except under fp16 AMP with gradient clipping, which Lightning
    refuses for optimizers that unscale inside their step. A set value is kept as given; an
    optimizer without ``fused`` gets no such key."""
    if "fused" not in settings or settings["fused"] is not None:
        return settings
    rest = {k: v for k, v in settings.items() if k != "fused"}
    takes = "fused" in inspect.signature(factory).parameters
    return {**rest, "fused": True} if takes and not fp16_clipping else rest


class WarmupPolyLR(LRScheduler):
    """mmcv's ``poly`` policy with ``linear`` warmup, stepped once per optimizer step.

    lr(i) = base_lr * poly(i) * warmup(i), where
    poly(i) = (1 - i / total_steps) ** power * (1 - min_lr_ratio) + min_lr_ratio and
    warmup(i) = 1 - (1 - i / warmup_steps) * (1 - warmup_ratio) for i < warmup_steps, else 1.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int = 1500,
        warmup_ratio: float = 1e-6,
        power: float = 1.0,
        min_lr_ratio: float = 0.0,
        last_epoch: int = -1,
    ) -> None:
        if total_steps <= 0:
            raise InputError(f"WarmupPolyLR: total_steps must be > 0, got {total_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.warmup_ratio = warmup_ratio
        self.power = power
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        poly = (1.0 - progress) ** self.power * (1.0 - self.min_lr_ratio) + self.min_lr_ratio
        if step < self.warmup_steps:
            poly *= 1.0 - (1.0 - step / self.warmup_steps) * (1.0 - self.warmup_ratio)
        return poly

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]


INTERVALS = ("step", "epoch", "validation")


def build_scheduler(
    spec: Mapping[str, Any], optimizer: torch.optim.Optimizer, total_steps: int
) -> tuple[Any, dict[str, Any]]:
    """(scheduler, Lightning settings) from ``spec``: a ``_target_`` (any
    ``torch.optim.lr_scheduler`` class, ``WarmupPolyLR``, or a user's class taking the optimizer
    first), its arguments, and ``interval`` (step | epoch | validation: after each validation),
    ``frequency``, ``monitor`` (the metric ReduceLROnPlateau reads, e.g. val/mIoU).

    A step-interval schedule that takes a length (``total_steps``: WarmupPolyLR, OneCycleLR;
    ``T_max``: CosineAnnealingLR) and leaves it null gets the run's optimizer steps, so it ends
    at the last step, the one a time budget planned too."""
    from segformer.models.network import instantiate, locate

    spec = dict(spec)
    settings = {
        "interval": spec.pop("interval", "step"),
        "frequency": int(spec.pop("frequency", 1)),
    }
    monitor = spec.pop("monitor", None)
    if settings["interval"] not in INTERVALS:
        raise InputError(
            f"scheduler.interval={settings['interval']!r}; expected one of {', '.join(INTERVALS)}"
        )
    if monitor is not None:
        settings["monitor"] = monitor
    target = locate(str(spec.get("_target_")), "scheduler")
    takes = inspect.signature(target).parameters
    # an experiment tunes the paper's schedule (e.g. warmup_steps); another schedule chosen
    # beside it (scheduler=plateau) does not take those settings: left out, said once
    paper = set(inspect.signature(WarmupPolyLR).parameters) - {"optimizer", "last_epoch"}
    unused = sorted(k for k in spec if k in paper and k not in takes)
    if unused and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values()):
        warnings.warn(
            f"scheduler {spec['_target_']} takes no {', '.join(unused)} (settings of the "
            "warmup-poly schedule, e.g. from the experiment): not used",
            stacklevel=2,
        )
        spec = {k: v for k, v in spec.items() if k not in unused}
    for length in ("total_steps", "T_max"):
        if length in takes and spec.get(length) is None:
            if settings["interval"] != "step":
                raise InputError(
                    f"scheduler.{length}: set it for interval {settings['interval']!r} "
                    "(it is the run's steps only for interval step)"
                )
            spec[length] = total_steps
    return instantiate(spec, "scheduler", optimizer=optimizer), settings
