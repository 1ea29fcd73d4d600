"""An encoder: any nn.Module built with ``in_channels`` that returns a list of feature maps and
says their channels in ``out_channels``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvEncoder(nn.Module):
    """Four conv stages at strides 4, 8, 16, 32: (B, C, H, W) -> [(B, w_i, H/s_i, W/s_i)]."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (16, 32, 64, 128)) -> None:
        super().__init__()
        self.out_channels = list(widths)  # the contract: channels of each returned map
        self.stages = nn.ModuleList()
        for i, width in enumerate(widths):
            kernel, stride = (7, 4) if i == 0 else (3, 2)
            self.stages.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, width, kernel, stride, kernel // 2, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                )
            )
            in_channels = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return features
