"""The zero-valid-pixel rule every pixel-averaged loss follows.

A batch can hold no pixel to learn from: a crop of void only, an unlabelled image, class
weights of 0 on every labelled pixel. The mean over zero pixels is 0 / 0 = NaN in PyTorch
(``F.cross_entropy``), which would stop a run on a valid dataset. As mmseg, such a loss is 0
instead, and its gradient is 0 too. It must still be computed from the logits (a sum over the
kept pixels, 0 when there are none), not be a detached constant: under DDP every process has to
run the backward pass and join the gradient all-reduce, and every parameter has to get its
(zero) gradient.

Losses that average over kept pixels divide with ``valid_mean`` (or by ``valid_count``, e.g. in
a backward pass).
"""

from __future__ import annotations

import torch


def valid_count(count: torch.Tensor) -> torch.Tensor:
    """The divisor of a mean over ``count`` kept pixels (or their summed weights): ``count``,
    with 0 replaced by 1, so that a sum over no pixels (0) stays 0 and no 0 / 0 appears."""
    return torch.where(count > 0, count, torch.ones_like(count))


def valid_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` for a ``total`` summed over ``count`` kept pixels (or summed weights),
    and 0 with a zero gradient when ``count`` is 0. ``total`` has to come from the logits (a
    masked sum) so the result stays in the graph; no host synchronisation."""
    return total / valid_count(count)
