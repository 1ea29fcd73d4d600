"""Bilinear upsampling fused with what follows it: argmax (inference) and cross-entropy (training).

Both compute the same function as ``F.interpolate(logits, size, mode="bilinear",
align_corners=False)`` followed by ``argmax(1)`` or ``F.cross_entropy``, without ever holding the
(B, K, H, W) float tensor of upsampled logits: at 512 x 512 with 150 classes that is 157 MB per
image, and reading and writing it is most of the cost of the last step.

An output pixel is a convex mix of its low-resolution cell's four corners (edge-clamped), with
weights ``wy`` and ``wx`` computed as ATen does. Values agree with ATen's to float rounding (the
mix is evaluated as two nested lerps, ATen sums four products), so an argmax can only differ
where the top two classes tie to about 1e-6.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def source_index(out_size: int, in_size: int, device: torch.device):
    """Neighbour indices i0, i1 and weight of i1 of bilinear, align_corners=False (as ATen)."""
    scale = torch.tensor(in_size, dtype=torch.float32, device=device) / out_size
    src = ((torch.arange(out_size, device=device) + 0.5) * scale - 0.5).clamp_(min=0)
    i0 = src.long()  # floor, src >= 0
    i1 = (i0 + 1).clamp_(max=in_size - 1)
    return i0, i1, src - i0


def _cell_reduce(table: torch.Tensor, op) -> torch.Tensor:
    """op over the four corners (i, j), (i, j+1), (i+1, j), (i+1, j+1) of every cell, edge-clamped.

    (B, h, w, K) -> (B, h, w, K); ``op`` is torch.maximum or torch.minimum.
    """
    table = torch.cat([op(table[:, :, :-1], table[:, :, 1:]), table[:, :, -1:]], dim=2)
    return torch.cat([op(table[:, :-1], table[:, 1:]), table[:, -1:]], dim=1)


@torch.no_grad()
def upsample_argmax(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(logits, size, bilinear).argmax(1)`` touching only candidate classes.

    A class can win at an output pixel only if its largest corner value in the pixel's cell
    reaches the best smallest-corner value of any class (the mix of a class lies between its
    corner extremes). Most cells of a trained model have one candidate: the pixel takes the cell's
    top class. The others are mixed over their candidates only, grouped by candidate count
    (at most 2, 4, 8, ... classes) so that each group is a dense (pixels, T) computation.
    (B, K, h, w) -> (B, H, W) int64.
    """
    B, K, h, w = logits.shape
    H, W = size
    y0, y1, wy = source_index(H, h, logits.device)
    x0, x1, wx = source_index(W, w, logits.device)
    table = logits.permute(0, 2, 3, 1).float()  # (B, h, w, K), a view of channels-last fp32
    hi = _cell_reduce(table, torch.maximum).view(B * h * w, K)  # a class's largest corner value
    lo = _cell_reduce(table, torch.minimum).view(B * h * w, K)  # and its smallest
    # the computed mix may leave its corner range by an ulp of the largest magnitude
    slack = 1e-6 * torch.maximum(hi.amax(), -lo.amin())
    lo = lo.amax(1, keepdim=True)  # (B*h*w, 1) the winner's value is at least this
    count = torch.count_nonzero(hi >= lo - slack, dim=1)  # (B*h*w,) candidates per cell, >= 1
    cell_of = (y0[:, None] * w + x0).flatten()  # (H*W,) cell of each output pixel
    cell_of = (torch.arange(B, device=logits.device)[:, None] * (h * w) + cell_of).flatten()
    table = table.reshape(B * h * w, K)
    out = table.argmax(1)[cell_of]  # (B*H*W,) right wherever a cell has one candidate
    size_t, most = 1, int(count.max())
    while size_t < most:  # cells with size_t/2 < count <= size_t candidates, size_t = 2, 4, ...
        cells = (count > size_t).nonzero().squeeze(1)
        size_t = min(2 * size_t, K)
        cells = cells[count[cells] <= size_t]  # (Mc,) flat (b, i, j)
        if cells.numel() == 0:
            continue
        classes = hi[cells].topk(size_t, dim=1, sorted=False).indices  # (Mc, T) candidates
        right = cells + (cells % w < w - 1)  # corner (i, j+1), edge-clamped
        down = (cells // w % h < h - 1) * w  # offset to row i+1, edge-clamped
        c00, c01, c10, c11 = (
            table[c].gather(1, classes) for c in (cells, right, cells + down, right + down)
        )  # (Mc, T)
        row = torch.full((B * h * w,), -1, dtype=torch.long, device=logits.device)
        row[cells] = torch.arange(cells.numel(), device=logits.device)
        row = row[cell_of]  # (B*H*W,) the pixel's cell among ``cells``, or -1
        pixels = (row >= 0).nonzero().squeeze(1)  # (M,) flat (b, y, x)
        r = row[pixels]
        wx_m, wy_m = wx[pixels % W, None], wy[pixels // W % H, None]  # (M, 1)
        upper = torch.lerp(c00[r], c01[r], wx_m)  # (M, T)
        lower = torch.lerp(c10[r], c11[r], wx_m)
        best = torch.lerp(upper, lower, wy_m).argmax(1, keepdim=True)  # (M, 1)
        out[pixels] = classes[r].gather(1, best).squeeze(1)
    return out.view(B, H, W)


def upsample_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """``F.cross_entropy(F.interpolate(logits, target size, bilinear), target, ignore_index)``."""
    return _UpsampleCrossEntropy.apply(logits, target, ignore_index)
