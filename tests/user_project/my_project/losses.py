"""A loss term: called as loss(logits (B, K, h, w), target (B, H, W), ignore_index,
class_weight (K,) or None) -> a scalar. Batches without a labelled pixel never reach it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SmoothedCrossEntropy:
    """Cross-entropy with label smoothing on the logits upsampled to the label size."""

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = smoothing

    def __call__(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        ignore_index: int,
        class_weight: torch.Tensor | None,
    ) -> torch.Tensor:
        up = F.interpolate(logits, target.shape[-2:], mode="bilinear", align_corners=False)
        return F.cross_entropy(
            up,
            target,
            weight=class_weight,
            ignore_index=ignore_index,
            label_smoothing=self.smoothing,
        )
