"""Evaluation-time inference for any segmentation ``nn.Module``: whole image, sliding window,
multi-scale + flip test-time augmentation, following the official SegFormer / mmseg recipes.

``model(x)`` must map images (B, C, H, W) to logits (B, K, h, w) at any resolution; logits are
resized bilinearly (align_corners=False) to the model input size, as mmseg's ``encode_decode``.
Images are resized after normalisation: bilinear interpolation commutes with the per-channel
affine normalisation, so this equals resizing the raw image (up to uint8 rounding).

A model with one output channel is binary: its probability is the sigmoid of the logit, its
class map 1 (foreground) where that exceeds the model's ``threshold`` attribute (0.5 without
one), else 0. Every blend treats it as the softmax of the logit pair (0, x), whose class-1
probability the sigmoid is: windows average the logit, scales and flips the probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from segformer.data.transforms import normalize
from segformer.errors import InputError
from segformer.models.upsample import resize_bilinear, upsample_argmax, upsample_threshold
from segformer.sizes import pair

Size = tuple[int, int]
# short side (int), or (long, short) edge limits with the aspect ratio kept, as mmseg's Resize
Scale = int | tuple[int, int]
# sliding windows per forward: a batch of 4 512x512 crops keeps B0-B5 in a few GB
WINDOW_BATCH = 4


@dataclass(frozen=True)
class InferenceConfig:
    """How to run a model on a batch at test time.

    mode: "whole" (one forward of the resized batch) or "slide" (crop windows, overlaps averaged).
    scale: resize before inference: None keeps the size, an int sets the short side, (long, short)
        rescales so that the long side <= long and the short side <= short.
    align: round the resized sides up to a multiple of this (official AlignedResize, e.g. 32).
    crop, stride: (h, w) window size and step for "slide".
    scales: ratios applied to ``scale`` (or to the image size when ``scale`` is None).
    flip: also run on the horizontally flipped image.
    window_batch: windows per forward in "slide" (each forward sees B * window_batch crops).
    """

    mode: Literal["whole", "slide"] = "whole"
    scale: Scale | None = None
    align: int | None = None
    crop: Size = (1024, 1024)
    stride: Size = (768, 768)
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window_batch: int = WINDOW_BATCH

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise InputError(f"InferenceConfig.mode={self.mode!r}; expected 'whole' or 'slide'")
        # Hydra hands over lists (ListConfig); store tuples so configs compare and hash
        if self.scale is not None and not isinstance(self.scale, int):
            object.__setattr__(self, "scale", pair(self.scale, "InferenceConfig.scale"))
        object.__setattr__(self, "crop", pair(self.crop, "InferenceConfig.crop"))
        object.__setattr__(self, "stride", pair(self.stride, "InferenceConfig.stride"))
        object.__setattr__(self, "scales", tuple(float(r) for r in self.scales))
        if any(s > c for s, c in zip(self.stride, self.crop, strict=True)):
            raise InputError(
                f"InferenceConfig.stride={self.stride} exceeds crop={self.crop}: windows would "
                "leave pixels uncovered"
            )
        if not self.scales or min(self.scales) <= 0:
            raise InputError(f"InferenceConfig.scales={self.scales}; expected positive ratios")
        if self.window_batch < 1:
            raise InputError(f"InferenceConfig.window_batch={self.window_batch}; expected >= 1")


# The paper's test settings (official configs and tools/test.py --aug-test).
def resized_shape(size: Size, scale: Scale | None, align: int | None, ratio: float = 1.0) -> Size:
    """(H, W) an image of ``size`` is resized to: mmcv keep-ratio rescale, then AlignedResize."""
    h, w = size
    if scale is None:
        factor = ratio
    else:
        long, short = (math.inf, scale) if isinstance(scale, int) else scale
        factor = ratio * min(long / max(h, w), short / min(h, w))
    # mmcv rescale_size rounding; at least 1 pixel (a thumbnail at a ratio < 0.5)
    h, w = max(int(h * factor + 0.5), 1), max(int(w * factor + 0.5), 1)
    if align:
        h, w = math.ceil(h / align) * align, math.ceil(w / align) * align
    return h, w


def probabilities(scores: Tensor) -> Tensor:
    """Logits (B, K, H, W) -> probabilities: the softmax over K, the sigmoid for K = 1."""
    return scores.sigmoid() if scores.shape[1] == 1 else scores.softmax(1)


def threshold_of(model: nn.Module) -> float:
    """The foreground cut of a one-output (binary) model: its ``threshold``, else 0.5."""
    return float(getattr(model, "threshold", 0.5))


def _forward(model: nn.Module, x: Tensor) -> Tensor:
    return resize_bilinear(model(x), x.shape[-2:])  # (B, K, H, W) at the input size


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    # official slide_inference grid (crop <= size); the last window ends at the border
    n = max(size - crop + stride - 1, 0) // stride + 1
    return [min(i * stride, size - crop) for i in range(n)]


def sliding_window_inference(
    model: nn.Module, images: Tensor, crop: Size, stride: Size, window_batch: int = WINDOW_BATCH
) -> Tensor:
    """Logits (B, K, H, W) averaged over crop windows; ``window_batch`` windows per forward.

    As the official slide_inference, a side shorter than the crop is not padded: the windows
    span it whole (padding would change every output of a global-attention model).
    """
    B, _, H, W = images.shape
    ch, cw = min(crop[0], H), min(crop[1], W)
    ys, xs = _window_starts(H, ch, stride[0]), _window_starts(W, cw, stride[1])
    windows = [(y, x) for y in ys for x in xs]
    logits = None
    count = torch.zeros(H, W, device=images.device)
    for i in range(0, len(windows), window_batch):
        group = windows[i : i + window_batch]
        crops = [images[..., y : y + ch, x : x + cw] for y, x in group]
        out = _forward(model, torch.cat(crops)).float().split(B)  # n x (B, K, ch, cw)
        if logits is None:
            logits = out[0].new_zeros(B, out[0].shape[1], H, W)
        for (y, x), window_logits in zip(group, out, strict=True):
            logits[..., y : y + ch, x : x + cw] += window_logits
            count[y : y + ch, x : x + cw] += 1
    return logits / count


def _single_pass(
    model: nn.Module, images: Tensor, cfg: InferenceConfig, ratio: float, out_size: Sequence[int]
) -> Tensor:
    """Logits (B, K, *out_size) at one scale ratio, without flip."""
    x = resize_bilinear(images, resized_shape(images.shape[-2:], cfg.scale, cfg.align, ratio))
    if cfg.mode == "slide":
        logits = sliding_window_inference(model, x, cfg.crop, cfg.stride, cfg.window_batch)
    else:
        logits = _forward(model, x)
    # straight to the output size: one interpolation, as mmseg resizes to the original shape
    return resize_bilinear(logits, out_size)


def multi_scale_inference(
    model: nn.Module, images: Tensor, cfg: InferenceConfig, out_size: Sequence[int] | None = None
) -> Tensor:
    """Probabilities (B, K, *out_size) averaged over ``cfg.scales`` and the flip (softmax; the
    sigmoid for one output)."""
    out_size = tuple(out_size or images.shape[-2:])
    flips = (False, True) if cfg.flip else (False,)
    passes = [(ratio, flip) for ratio in cfg.scales for flip in flips]
    probs = None
    for ratio, flip in passes:
        x = images.flip(-1) if flip else images
        p = probabilities(_single_pass(model, x, cfg, ratio, out_size).float())
        p = p.flip(-1) if flip else p  # resizing commutes with the flip
        probs = p if probs is None else probs + p
    return probs / len(passes)


def predict_logits(
    model: nn.Module, images: Tensor, cfg: InferenceConfig, out_size: Sequence[int] | None = None
) -> Tensor:
    """Class scores (B, K, *out_size) for images (B, C, H, W); out_size defaults to (H, W).

    One pass (a single scale, no flip) returns logits; several passes return the averaged softmax
    probabilities (what the official aug-test averages). Either way argmax gives the prediction
    (``predict_classes`` also thresholds a one-output model's).
    Gradients follow the caller's mode: wrap in ``torch.inference_mode()`` for evaluation.
    """
    out_size = tuple(out_size or images.shape[-2:])
    if len(cfg.scales) == 1 and not cfg.flip:
        return _single_pass(model, images, cfg, cfg.scales[0], out_size)
    return multi_scale_inference(model, images, cfg, out_size)


def predict_probabilities(
    model: nn.Module, images: Tensor, cfg: InferenceConfig, out_size: Sequence[int] | None = None
) -> Tensor:
    """Probabilities (B, K, *out_size): ``predict_logits``' scores, a single pass's logits
    turned into probabilities (softmax; the sigmoid for one output)."""
    return _as_probabilities(predict_logits(model, images, cfg, out_size), cfg)


def _as_probabilities(scores: Tensor, cfg: InferenceConfig) -> Tensor:
    # predict_logits gives logits for one pass, averaged probabilities for several
    return probabilities(scores.float()) if len(cfg.scales) == 1 and not cfg.flip else scores


def class_map(probs: Tensor, threshold: float = 0.5) -> Tensor:
    """Probabilities (B, K, H, W) -> class map (B, H, W) int64: the argmax, or for one channel
    (binary) 1 where the probability exceeds ``threshold``."""
    return (probs[:, 0] > threshold).long() if probs.shape[1] == 1 else probs.argmax(1)


def predict_classes(
    model: nn.Module, images: Tensor, cfg: InferenceConfig, out_size: Sequence[int] | None = None
) -> Tensor:
    """Class map (B, *out_size) int64: ``predict_logits(...).argmax(1)``, but without the
    full-size logits where the mode allows it.

    Whole-image inference at one scale without flip on a model with ``forward_logits`` (the
    H/4 logits, as SegFormer) takes the class-map path of ``SegFormer.predict``: the final
    bilinear upsample and the argmax only evaluate candidate classes (``upsample_argmax``), and
    equal the reference except at near-ties (exact ties of two upsampled logits). When the image
    was resized first, the logits are brought to the resized input's size as mmseg does, and the
    last resize to ``out_size`` is the fused one. Sliding windows and multi-scale / flip averages
    need the full-size scores and use ``predict_logits``.

    A one-output (binary) model's map is its sigmoid above ``threshold_of(model)``,
    ``class_map(predict_probabilities(...), threshold)`` in every mode (whole image: the same
    upsample and sigmoid, ``upsample_threshold``).
    """
    out_size = tuple(out_size or images.shape[-2:])
    one_pass = len(cfg.scales) == 1 and not cfg.flip
    if not (one_pass and cfg.mode == "whole" and hasattr(model, "forward_logits")):
        scores = predict_logits(model, images, cfg, out_size)
        if scores.shape[1] == 1:
            return class_map(_as_probabilities(scores, cfg), threshold_of(model))
        return scores.argmax(1)
    size = resized_shape(images.shape[-2:], cfg.scale, cfg.align, cfg.scales[0])
    logits = model.forward_logits(resize_bilinear(images, size))  # (B, K, h/4, w/4)
    if size != out_size:  # mmseg: logits to the resized input first, then to the label size
        logits = resize_bilinear(logits, size)
    if logits.shape[1] == 1:
        return upsample_threshold(logits, out_size, threshold_of(model))
    return upsample_argmax(logits, out_size)


@torch.inference_mode()
def segment(
    model: nn.Module,
    images: np.ndarray,
    cfg: InferenceConfig | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> np.ndarray:
    """Class maps (B, H, W) int64 for images (B, H, W, C) of one size (uint8 RGB normalised with
    the ImageNet statistics, or any bands with their ``mean`` / ``std`` in stored units), on the
    model's device, in any inference mode (default: whole image at its own size)."""
    x = _normalized(model, images, mean, std)
    return predict_classes(model, x, cfg or InferenceConfig()).cpu().numpy()


@torch.inference_mode()
def segment_binary(
    model: nn.Module,
    images: np.ndarray,
    cfg: InferenceConfig | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(class maps (B, H, W) int64, foreground probabilities (B, H, W) float32) of a one-output
    (binary) model, images as ``segment``'s; the maps are the probabilities above
    ``threshold_of(model)``."""
    x = _normalized(model, images, mean, std)
    probs = predict_probabilities(model, x, cfg or InferenceConfig())
    if probs.shape[1] != 1:
        raise InputError(f"segment_binary takes a one-output model; this one has {probs.shape[1]}")
    return class_map(probs, threshold_of(model)).cpu().numpy(), probs[:, 0].cpu().numpy()


def _normalized(
    model: nn.Module, images: np.ndarray, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Tensor:
    """(B, H, W, C) stored values -> normalised (B, C, H, W) on the model's device."""
    device = next(model.parameters()).device
    if not images.flags.writeable:  # np.asarray(PIL image): torch warns on read-only arrays
        images = images.copy()
    return normalize(torch.from_numpy(images).to(device), mean, std)
