"""A learning-rate schedule: a torch LRScheduler taking the optimizer first. Its
``total_steps``, left null in the config, becomes the run's optimizer steps."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


class WarmupCosine(LambdaLR):
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0
    ) -> None:
        def factor(step: int) -> float:
            if step < warmup_steps:
                return (step + 1) / warmup_steps
            progress = min(step - warmup_steps, total_steps) / max(total_steps - warmup_steps, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        super().__init__(optimizer, factor)
