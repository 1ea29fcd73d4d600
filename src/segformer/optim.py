"""The paper's optimisation recipe: AdamW parameter groups and the warmup + poly schedule."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 10.0,
    no_decay_bias: bool = False,
    head_prefix: str = "head.",
) -> list[dict[str, Any]]:
    """Split parameters as the official configs do (mmcv ``paramwise_cfg``).

    ``head``: lr x head_lr_mult (everything in the decoder, its BatchNorm included, keeps weight
    decay, since the official key match ``head`` wins over ``norm``); encoder LayerNorm weights
    and biases: no weight decay. ``no_decay_bias`` also exempts every other bias.
    """
    norm_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.LayerNorm | nn.GroupNorm)
        for p in m.parameters(recurse=False)
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
            raise ValueError(f"WarmupPolyLR: total_steps must be > 0, got {total_steps}")
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
