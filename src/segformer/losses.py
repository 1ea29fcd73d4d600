"""Segmentation losses on the decoder's H/4 logits, combinable with weights (plain torch).

Every loss takes low-resolution logits (B, K, h, w) and labels (B, H, W), upsamples the logits
bilinearly to the label size (as the paper's training), leaves out ``ignore_index`` pixels,
takes optional class weights (K,), and returns 0 (connected to the graph, zero gradient) when a
batch has no valid pixel.

- ``ce``: cross-entropy, the weighted mean over valid pixels (``F.cross_entropy``), computed
  with ``upsample_cross_entropy`` (banded on the CPU: the upsampled logits never exist whole).
- ``focal``: softmax focal loss (Lin et al. 2017), w[y] (1 - p_y)^gamma (-log p_y) averaged like
  ``ce`` (gamma 0 is ``ce`` exactly).
- ``dice``: mmseg's DiceLoss (smooth 1, exponent 2): per image and class
  1 - (2 sum(p g) + smooth) / (sum(p^2) + sum(g^2) + smooth) over the valid pixels, times the
  class weight, summed over classes / K, averaged over the batch. Unlike mmseg 0.x, ignored
  pixels are left out of the denominator too. With one logit (binary) the foreground's term
  alone on its sigmoid, as mmseg's DiceLoss on one channel (times the foreground's weight).
- ``lovasz``: Lovasz-softmax (Berman et al. 2018), classes present in the batch, all valid
  pixels of the batch at once (mmseg's per_image=False), class weights multiply the class terms.
- ``bce``: binary cross-entropy with logits of a one-logit (binary, ``model.num_classes=1``)
  network, labels 0 background / 1 foreground, averaged like ``ce`` (class weights (2,) by the
  pixel's label). The binary counterpart of ``ce``; a softmax of logits (0, x) gives its values.
- ``ohem``: cross-entropy on hard pixels, chosen as mmseg's OHEMPixelSampler does: with
  ``thresh``, the valid pixels whose probability of their label is below
  max(thresh, the (min_kept x B)-th smallest such probability); without it, the min_kept x B
  pixels of largest loss. Averaged over the kept pixels (class-weighted), as HRNet's
  OhemCrossEntropy; mmseg divides the kept pixels' sum by all pixels instead.

``build_loss([{name: ce, weight: 1.0}, {name: dice, weight: 0.5, smooth: 1.0}])`` returns a
``SegLoss`` summing the weighted terms; extra keys are the loss's keyword arguments. A term may
also be a user's loss by ``_target_`` (see ``build_loss``). A binary network trains with
``bce`` and ``dice`` (``BINARY_LOSSES``), the others are softmax losses of 2+ logits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from segformer.errors import InputError
from segformer.models.upsample import resize_bilinear, upsample_cross_entropy
from segformer.models.valid_pixels import valid_mean


def _zero(logits: Tensor) -> Tensor:
    # no valid pixel where a mean is not the form (dice, lovasz): 0 that backpropagates zeros
    # to the logits, as valid_mean gives the averaged losses (models/valid_pixels.py)
    return logits.sum() * 0.0


def _class_weight(target: Tensor, weight: Tensor | None) -> Tensor:
    """Per-pixel weight of valid labels (1, or the class weight)."""
    if weight is None:
        return torch.ones(target.shape, device=target.device, dtype=torch.float32)
    return weight.float()[target]


def cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Tensor | None = None
) -> Tensor:
    """``F.cross_entropy(upsampled logits, target, weight, ignore_index)``, banded on the CPU;
    0 without a valid pixel (``models/valid_pixels.py``)."""
    return upsample_cross_entropy(logits.float(), target, ignore_index, weight)


def binary_cross_entropy(
    logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Tensor | None = None
) -> Tensor:
    """BCE with logits of one upsampled logit (B, 1, h, w) against labels 0 / 1, the
    (class-weighted) mean over valid pixels; 0 without a valid pixel (valid_pixels.py)."""
    if logits.shape[1] != 1:
        raise InputError(f"bce takes one logit per pixel (B, 1, h, w), got {logits.shape[1]}")
    up = resize_bilinear(logits.float(), target.shape[-2:])[:, 0]  # (B, H, W)
    valid = target != ignore_index
    labels = target[valid].long()
    w = _class_weight(labels, weight)
    total = F.binary_cross_entropy_with_logits(up[valid], labels.float(), w, reduction="sum")
    return valid_mean(total, w.sum())


def _upsampled_valid(logits: Tensor, target: Tensor, ignore_index: int) -> tuple[Tensor, Tensor]:
    """(log-probabilities (N, K) of the valid pixels of the upsampled logits, labels (N,))."""
    up = resize_bilinear(logits.float(), target.shape[-2:])  # (B, K, H, W)
    valid = target != ignore_index
    flat = up.permute(0, 2, 3, 1)[valid]  # (N, K)
    return flat.log_softmax(-1), target[valid].long()


def focal_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    weight: Tensor | None = None,
    gamma: float = 2.0,
) -> Tensor:
    """Softmax focal loss, class-weighted mean over valid pixels (see the module docstring)."""
    log_p, labels = _upsampled_valid(logits, target, ignore_index)
    log_pt = log_p.gather(1, labels[:, None]).squeeze(1)
    w = _class_weight(labels, weight)
    loss = -((1 - log_pt.exp()).clamp(min=0) ** gamma) * log_pt
    return valid_mean((loss * w).sum(), w.sum())


def dice_loss(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    weight: Tensor | None = None,
    smooth: float = 1.0,
    exponent: float = 2.0,
) -> Tensor:
    """mmseg's DiceLoss with ignored pixels left out of both sums (module docstring)."""
    up = resize_bilinear(logits.float(), target.shape[-2:])
    B, K = up.shape[:2]
    valid = (target != ignore_index).float().view(B, 1, -1)  # (B, 1, HW)
    if K == 1:  # binary: the foreground's probability and mask
        probs = up.sigmoid().view(B, 1, -1) * valid
        onehot = (target == 1).float().view(B, 1, -1) * valid
        weight = None if weight is None else weight[1:]
    else:
        probs = up.softmax(1).view(B, K, -1) * valid
        onehot = F.one_hot(torch.where(target == ignore_index, 0, target).long(), K)
        onehot = onehot.view(B, -1, K).transpose(1, 2).float() * valid  # (B, K, HW)
    num = 2 * (probs * onehot).sum(-1) + smooth
    den = (probs.pow(exponent) + onehot.pow(exponent)).sum(-1) + smooth
    per_class = 1 - num / den  # (B, K)
    if weight is not None:
        per_class = per_class * weight.float()
    if K > 1 and 0 <= ignore_index < K:  # mmseg skips a class whose id is the ignore index
        per_class = per_class[:, torch.arange(K, device=up.device) != ignore_index]
    return (per_class.sum(1) / K).mean()


def _lovasz_grad(gt_sorted: Tensor) -> Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss w.r.t. sorted errors."""
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if gt_sorted.numel() > 1:
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
    return jaccard


def lovasz_softmax(
    logits: Tensor, target: Tensor, ignore_index: int = 255, weight: Tensor | None = None
) -> Tensor:
    """Lovasz-softmax over the valid pixels of the batch, present classes (module docstring)."""
    log_p, labels = _upsampled_valid(logits, target, ignore_index)
    if labels.numel() == 0:
        return _zero(logits)
    probs = log_p.exp()
    losses = []
    for c in labels.unique().tolist():  # the classes present
        fg = (labels == c).float()
        errors = (fg - probs[:, c]).abs()
        errors_sorted, perm = errors.sort(descending=True)
        loss = errors_sorted @ _lovasz_grad(fg[perm])
        losses.append(loss * weight[c].float() if weight is not None else loss)
    return torch.stack(losses).mean()


def ohem_cross_entropy(
    logits: Tensor,
    target: Tensor,
    ignore_index: int = 255,
    weight: Tensor | None = None,
    thresh: float | None = 0.7,
    min_kept: int = 100000,
) -> Tensor:
    """Cross-entropy over mmseg OHEMPixelSampler's hard pixels (module docstring)."""
    log_p, labels = _upsampled_valid(logits, target, ignore_index)
    if labels.numel() == 0:
        return _zero(logits)
    log_pt = log_p.gather(1, labels[:, None]).squeeze(1)
    w = _class_weight(labels, weight)
    batch_kept = min_kept * target.shape[0]
    with torch.no_grad():
        if thresh is not None:
            prob = log_pt.exp()
            sorted_prob = prob.sort().values
            threshold = max(float(sorted_prob[min(batch_kept, prob.numel() - 1)]), thresh)
            keep = prob < threshold
        else:  # the batch_kept largest (class-weighted) losses
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[(-log_pt * w).argsort(descending=True)[:batch_kept]] = True
    return valid_mean(-(log_pt * w)[keep].sum(), w[keep].sum())


LOSSES: dict[str, Callable[..., Tensor]] = {
    "ce": cross_entropy,
    "bce": binary_cross_entropy,
    "focal": focal_loss,
    "dice": dice_loss,
    "lovasz": lovasz_softmax,
    "ohem": ohem_cross_entropy,
}
# the losses of a binary network (one logit); the others are for 2+ logits (softmax)
BINARY_LOSSES = ("bce", "dice")


@dataclass
class LossTerm:
    """One weighted term: a built-in loss by ``name``, or ``fn`` built from a ``_target_``."""

    name: str
    weight: float
    kwargs: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., Tensor] | None = None

    def __call__(self, logits: Tensor, target: Tensor, ignore_index: int, cw: Tensor | None):
        if self.fn is None:
            return LOSSES[self.name](logits, target, ignore_index, cw, **self.kwargs)
        if not (target != ignore_index).any():  # the zero-valid-pixel rule, for any loss
            return _zero(logits)
        return self.fn(logits, target, ignore_index, cw)


class SegLoss:
    """Weighted sum of loss terms; ``last`` holds each term's value of the latest call."""

    def __init__(self, terms: Sequence[LossTerm]) -> None:
        if not terms:
            raise InputError("model.loss is an empty list; give at least one {name, weight}")
        self.terms = list(terms)
        self.last: dict[str, Tensor] = {}

    def __call__(
        self,
        logits: Tensor,
        target: Tensor,
        ignore_index: int = 255,
        class_weight: Tensor | None = None,
    ) -> Tensor:
        total = None
        self.last = {}
        for term in self.terms:
            value = term(logits, target, ignore_index, class_weight)
            self.last[term.name] = value.detach()
            total = term.weight * value if total is None else total + term.weight * value
        assert total is not None
        return total


def build_loss(
    spec: Sequence[Mapping[str, Any]] | Mapping[str, Any] | str, binary: bool = False
) -> SegLoss:
    """``SegLoss`` from config: a name ("dice"), one {name, weight, ...} or a list of them;
    ``binary``: for a one-logit network (names from ``BINARY_LOSSES``).

    A term may instead be any ``_target_`` (a class or function, with its arguments beside
    ``weight`` and an optional ``name``), built once, then called as
    ``loss(logits (B, K, h, w) fp32, target (B, H, W), ignore_index, class_weight (K,) | None)``
    -> a scalar; a batch without a valid pixel gives 0 without calling it."""
    from segformer.models.network import instantiate

    if isinstance(spec, str):
        spec = [{"name": spec}]
    elif isinstance(spec, Mapping):
        spec = [spec]
    terms = []
    for i, entry in enumerate(spec):
        entry = dict(entry)
        weight = float(entry.pop("weight", 1.0))
        if "_target_" in entry:
            name = entry.pop("name", None) or str(entry["_target_"]).rsplit(".", 1)[-1]
            fn = instantiate(entry, f"model.loss[{i}]")
            if not callable(fn):
                raise InputError(f"model.loss[{i}]: {entry['_target_']} built a non-callable")
            terms.append(LossTerm(name, weight, fn=fn))
            continue
        name = entry.pop("name", None)
        if name not in LOSSES:
            raise InputError(
                f"model.loss entry {dict(entry, name=name)}: name must be one of "
                f"{', '.join(LOSSES)}, or give a _target_"
            )
        if binary and name not in BINARY_LOSSES:
            raise InputError(
                f"model.loss {name}: a softmax loss of 2+ logits; a binary network "
                f"(model.num_classes=1) trains with {' and '.join(BINARY_LOSSES)}, or a _target_"
            )
        if not binary and name == "bce":
            raise InputError(
                "model.loss bce: binary cross-entropy of one logit needs model.num_classes=1 "
                "(binary); with one logit per class use ce"
            )
        allowed = list(inspect.signature(LOSSES[name]).parameters)[4:]
        unknown = sorted(set(entry) - set(allowed))
        if unknown:
            raise InputError(
                f"model.loss {name}: unknown option(s) {unknown}; it takes weight"
                + "".join(f", {a}" for a in allowed)
            )
        terms.append(LossTerm(name, weight, entry))
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise InputError(f"model.loss names {names}: each loss at most once (or name them)")
    return SegLoss(terms)
