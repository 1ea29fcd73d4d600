"""The all-MLP decoder of SegFormer, with an exact fast path.

Parameters keep the plain layout of the paper (per-stage Linear, 1x1 fuse conv over the concat
[c4, c3, c2, c1], BatchNorm, ReLU, Dropout2d, 1x1 classifier). ``forward`` computes the same
function cheaper: a 1x1 map commutes with bilinear upsampling (its weights sum to one per output
pixel) and a 1x1 conv over a concat is the sum of 1x1 maps over the parts, so

    fuse(cat(up(P4 x4), ..., P1 x1)) = sum_i up((F_i P_i) x_i)

with F_i the fuse slice of stage i. Each stage is mapped straight to E channels at its own low
resolution and only E-channel maps are upsampled: the 4E-channel concat at H/4 and the 4E -> E
conv over it (most of the decoder's MACs) disappear. With BatchNorm in eval mode its affine map
folds into the F_i P_i as well. ``forward_reference`` is the literal computation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segformer.models.upsample import resize_bilinear


def _pointwise(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """1x1 conv as a GEMM over pixels: (B, C, H, W) -> (B, E, H, W), channels-last in and out."""
    return F.linear(x.permute(0, 2, 3, 1), weight, bias).permute(0, 3, 1, 2)


class AllMLPHead(nn.Module):
    """forward(4 maps (B, C_i, H/s_i, W/s_i)) -> logits (B, num_classes, H/4, W/4).

    ``in_channels``: the C_i (the encoder's ``out_channels``); ``decoder_dim``: the paper's E."""

    stride = 4  # logits at 1/4 of the input: the first map's resolution

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        decoder_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.decoder_dim = decoder_dim
        self.proj = nn.ModuleList(nn.Linear(c, decoder_dim) for c in in_channels)  # c1..c4
        self.fuse = nn.Conv2d(len(in_channels) * decoder_dim, decoder_dim, 1, bias=False)
        self.bn = nn.BatchNorm2d(decoder_dim)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(decoder_dim, num_classes, 1)
        # the official ConvModule init; the MLPs and the classifier keep PyTorch's default init
        nn.init.kaiming_normal_(self.fuse.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        weights, bias = self._stage_weights()
        B, _, H, W = features[0].shape
        x = _pointwise(features[0], weights[0], bias)  # (B, E, H/4, W/4) channels-last
        for feature, weight in zip(features[1:], weights[1:], strict=True):
            up = resize_bilinear(_pointwise(feature, weight), (H, W))  # upsample E channels only
            # in place only outside autograd: an in-place add under a view's history makes the
            # backward copy and zero-fill full maps (2.2x slower head fwd+bwd, measured on AVX2)
            x = x + up if x.requires_grad else x.add_(up)
        # pixel-major from here on, (B, H, W, E): BatchNorm over a (pixels, E, 1, 1) view has
        # the statistics of BatchNorm2d over (B, E, H, W) and, unlike a channels-last map, keeps
        # its backward off ATen's layout-converting paths (2x faster fwd+bwd, measured on AVX2)
        x = x.permute(0, 2, 3, 1)
        if not self._bn_folded():
            x = self.bn(x.reshape(-1, self.decoder_dim, 1, 1)).view(x.shape)
        x = F.relu_(x)  # in place: nothing saved x for backward
        if self.dropout.training and self.dropout.p > 0:  # whole channels per image
            x = x * self.dropout(x.new_ones(B, self.decoder_dim, 1, 1)).view(B, 1, 1, -1)
        return self._classify(x)

    def _classify(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 classifier (B, H, W, E) -> (B, K, H, W) as a GEMM whose output width is
        padded to a multiple of 16 with zero rows: MKL's fp32 GEMM is 1.7x slower at widths like
        150 than at 160 (measured)."""
        weight, bias = self.classifier.weight.flatten(1), self.classifier.bias  # (K, E), (K,)
        k = weight.shape[0]
        pad = -k % 16 if k > 16 else 0
        if pad:
            weight, bias = F.pad(weight, (0, 0, 0, pad)), F.pad(bias, (0, pad))
        out = F.linear(x, weight, bias)  # (B, H, W, K + pad)
        return out[..., :k].contiguous().permute(0, 3, 1, 2)  # (B, K, H, W) channels-last

    def forward_reference(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The paper's computation, step by step (for parity tests and FLOP comparisons)."""
        size = features[0].shape[-2:]
        maps = [
            resize_bilinear(_pointwise(x, proj.weight, proj.bias), size)  # (B, E, H/4, W/4)
            for x, proj in zip(features, self.proj, strict=True)
        ]
        x = self.fuse(torch.cat(maps[::-1], dim=1))  # concat order c4, c3, c2, c1
        x = self.dropout(F.relu(self.bn(x)))
        return self.classifier(x)

    def _bn_folded(self) -> bool:
        return not self.bn.training and self.bn.running_mean is not None

    def _stage_weights(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per-stage (E, C_i) maps F_i P_i and the summed bias, with BatchNorm when it folds.

        Built every call from the live parameters, so gradients reach both P_i and F_i (a few
        E x E x C_i MACs, next to the E x 4E x (H/4 x W/4) ones the fused path saves).
        """
        fuse = self.fuse.weight.flatten(1).split(self.decoder_dim, dim=1)[::-1]  # (E, E), c1..c4
        weights = [f @ proj.weight for f, proj in zip(fuse, self.proj, strict=True)]
        bias = sum(f @ proj.bias for f, proj in zip(fuse, self.proj, strict=True))
        if self._bn_folded():
            scale = self.bn.weight * torch.rsqrt(self.bn.running_var + self.bn.eps)  # (E,)
            weights = [scale[:, None] * w for w in weights]
            bias = scale * (bias - self.bn.running_mean) + self.bn.bias
        return weights, bias
