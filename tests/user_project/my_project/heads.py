"""A decoder: any nn.Module built with ``in_channels`` (the encoder's out_channels) and
``num_classes`` that maps the feature maps to logits at 1/``stride`` of the input."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class FPNHead(nn.Module):
    """Top-down feature pyramid: each map projected to ``width``, summed coarse to fine."""

    stride = 4  # logits at the resolution of the first (stride-4) map

    def __init__(self, in_channels: Sequence[int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in in_channels)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](features[-1])
        for feature, lateral in zip(features[-2::-1], list(self.lateral)[-2::-1], strict=True):
            x = F.interpolate(x, feature.shape[-2:], mode="bilinear", align_corners=False)
            x = x + lateral(feature)
        return self.classifier(F.relu(x))
