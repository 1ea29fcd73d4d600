"""Batching evaluation samples of different sizes (val/test loaders with val_batch_size > 1)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import default_collate


def eval_collate(samples: list[dict[str, Any]], ignore_index: int = 255) -> dict[str, Any]:
    """``default_collate`` for samples of one size. Samples of different sizes are padded at the
    bottom / right to the largest: images with 0 (the mean colour after normalisation), masks
    with ``ignore_index``; ``image_size`` and ``mask_size`` (B, 2) then hold each sample's own
    (H, W) (they differ with ``eval_resize``). The model runs every image at its own size
    (``SegFormerModule._eval_mixed``), so metrics equal those of batch size 1."""
    image_sizes = [tuple(s["image"].shape[-2:]) for s in samples]
    mask_sizes = [tuple(s["mask"].shape[-2:]) for s in samples]
    if len(set(image_sizes)) == 1 and len(set(mask_sizes)) == 1:
        return default_collate(samples)
    image_hw = [max(sizes) for sizes in zip(*image_sizes, strict=True)]
    mask_hw = [max(sizes) for sizes in zip(*mask_sizes, strict=True)]
    padded = [
        {
            **s,
            "image": _pad_to(s["image"], image_hw, 0),
            "mask": _pad_to(s["mask"], mask_hw, ignore_index),
        }
        for s in samples
    ]
    batch = default_collate(padded)
    batch["image_size"] = torch.tensor(image_sizes)
    batch["mask_size"] = torch.tensor(mask_sizes)
    return batch


def _pad_to(x: torch.Tensor, size: list[int], value: int) -> torch.Tensor:
    """(..., h, w) -> (..., *size), padded at the bottom / right with ``value``."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, size[1] - w, 0, size[0] - h), value=value)
