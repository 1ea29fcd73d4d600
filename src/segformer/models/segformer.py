"""SegFormer = MiT encoder + all-MLP head, logits at H/4 upsampled bilinearly to the input."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segformer.models.convert import (
    adapt_in_channels,
    load_exact,
    read_checkpoint,
    save_transformers,
)
from segformer.models.head import AllMLPHead
from segformer.models.mit import MixTransformer
from segformer.models.upsample import resize_bilinear, upsample_argmax
from segformer.models.variants import get_variant


def pad_small(x: torch.Tensor, min_size: int) -> torch.Tensor:
    """``x`` (B, C, H, W) with a side under ``min_size`` padded at the bottom / right up to it
    by repeating the edge pixels (any side >= 1 can be; the image's own colours, not a border
    the model never saw), else ``x`` itself. The network cannot run on fewer pixels: its
    attention reduces the keys with a stride-8 conv at stage 1 (``MixTransformer``).

    While tracing (ONNX export) the sides are symbolic: the pad is always in the graph, with
    amount 0 (an identity) for images that need none."""
    h, w = x.shape[-2:]
    if isinstance(h, torch.Tensor):  # traced: keep the amounts dynamic
        pad_h, pad_w = (min_size - h).clamp(min=0), (min_size - w).clamp(min=0)
    elif h >= min_size and w >= min_size:
        return x
    else:
        pad_h, pad_w = max(min_size - h, 0), max(min_size - w, 0)
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


class SegFormer(nn.Module):
    """SegFormer-B0..B5 (``variant`` "b0".."b5", see ``variants.VARIANTS``).

    ``decoder_dim`` None = the variant's E from the paper (256 for B0/B1, 768 for B2-B5).
    Any image size H, W >= 1 runs: sides under ``min_input_size`` (29) are edge-padded and the
    output cropped back (``pad_small``); larger images run as they are.
    ``ln_eps_preset`` picks the LayerNorm eps of the code the weights come from: "official"
    (NVlabs), "hf" (transformers) or "mmseg" (``mit.LN_EPS_PRESETS``). ``in_channels``: bands of
    the input images (3 = RGB; pretrained RGB weights adapt, see ``convert.adapt_input_conv``).
    """

    def __init__(
        self,
        variant: str = "b0",
        num_classes: int = 150,
        decoder_dim: int | None = None,
        drop_path_rate: float = 0.1,
        dropout: float = 0.1,
        ln_eps_preset: str = "official",
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        spec = get_variant(variant)
        self.variant = variant
        self.num_classes = num_classes
        self.ln_eps_preset = ln_eps_preset
        self.in_channels = in_channels
        self.encoder = MixTransformer.from_variant(
            variant,
            drop_path_rate=drop_path_rate,
            ln_eps_preset=ln_eps_preset,
            in_channels=in_channels,
        )
        self.head = AllMLPHead(
            spec.embed_dims, decoder_dim or spec.decoder_dim, num_classes, dropout
        )

    @property
    def min_input_size(self) -> int:
        """The smallest image side the encoder runs on (29 for MiT-B0..B5); smaller images are
        padded up to it (``pad_small``)."""
        return self.encoder.min_input_size

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, K, ceil(H/4), ceil(W/4)) (channels-last).

        Any H, W >= 1: a side under ``min_input_size`` is padded (``pad_small``) and the logits
        are cropped back to the cells of the image."""
        padded = pad_small(x, self.min_input_size)
        logits = self.head(self.encoder(padded))
        if padded is x:
            return logits
        h, w = x.shape[-2:]
        return logits[..., : (h + 3) // 4, : (w + 3) // 4]  # ceil(side / 4): stage 1's map

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, K, H, W), bilinear with align_corners=False.

        The logits come channels-last, where bilinear upsampling vectorises over the K classes.
        An image padded by ``pad_small`` gets the logits of the padded image, cropped.
        """
        padded = pad_small(x, self.min_input_size)
        logits = resize_bilinear(self.head(self.encoder(padded)), padded.shape[-2:])
        return logits if padded is x else logits[..., : x.shape[-2], : x.shape[-1]]

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> class map (B, H, W) int64: forward(x).argmax(1) but for near-ties."""
        padded = pad_small(x, self.min_input_size)
        pred = upsample_argmax(self.head(self.encoder(padded)), padded.shape[-2:])
        return pred if padded is x else pred[..., : x.shape[-2], : x.shape[-1]]

    def compile(self, *args: Any, **kwargs: Any) -> None:
        """torch.compile the encoder and the head in place (``nn.Module.compile``).

        Every entry point (``forward``, ``forward_logits``, ``predict``) runs compiled and the
        state-dict keys stay clean (no ``_orig_mod.``). Arguments go to ``torch.compile``.
        """
        self.encoder.compile(*args, **kwargs)
        self.head.compile(*args, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        num_classes: int | None = None,
        variant: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> SegFormer:
        """Load any supported checkpoint (format auto-detected, see ``convert.py``), in eval mode.

        ``path``: a file, a transformers folder, or a Hugging Face Hub repo id such as
        ``nvidia/segformer-b0-finetuned-ade-512-512`` (``revision``: branch, tag or commit, or
        ``owner/name@revision``), fetched into / read from the Hub cache (``HF_HUB_OFFLINE=1``:
        the cache only).

        The variant and decoder width come from the weights; ``variant`` only checks them.
        Encoder-only checkpoints (ImageNet MiT, mmseg) leave the head randomly initialised. A
        ``num_classes`` other than the checkpoint's re-initialises the classifier (with a
        warning). The LayerNorm eps preset follows the source of the weights unless
        ``ln_eps_preset`` is given. ``in_channels`` defaults to the checkpoint's; other than
        that, 3-channel weights are adapted (``convert.adapt_input_conv``). Other ``kwargs`` go
        to the constructor.
        """
        ckpt = read_checkpoint(path, revision)
        if variant is not None and variant != ckpt.variant:
            raise ValueError(f"{path}: holds MiT-{ckpt.variant} weights, not {variant} as asked")
        if ckpt.decoder_dim is not None:
            given = kwargs.setdefault("decoder_dim", ckpt.decoder_dim)
            if given != ckpt.decoder_dim:
                raise ValueError(
                    f"{path}: decoder_dim={given} requested, the checkpoint has {ckpt.decoder_dim}"
                )
        kwargs.setdefault("ln_eps_preset", ckpt.ln_eps_preset)
        in_channels = kwargs.setdefault("in_channels", ckpt.in_channels)
        num_classes = num_classes or ckpt.num_classes or 150
        model = cls(variant=ckpt.variant, num_classes=num_classes, **kwargs)
        state, expected = adapt_in_channels(ckpt, in_channels, path), set(model.state_dict())
        if ckpt.decoder_dim is None:  # encoder-only weights
            expected = {k for k in expected if k.startswith("encoder.")}
        elif num_classes != ckpt.num_classes:
            warnings.warn(
                f"{path}: {ckpt.num_classes} classes in the checkpoint, {num_classes} requested; "
                "the classifier is re-initialised",
                stacklevel=2,
            )
            state = {k: v for k, v in state.items() if not k.startswith("head.classifier.")}
            expected = {k for k in expected if not k.startswith("head.classifier.")}
        load_exact(model, state, expected, path)
        return model.eval()

    def save_pretrained_transformers(
        self, folder: str | Path, class_names: Sequence[str] | None = None
    ) -> Path:
        """Write ``folder`` (config.json with id2label/label2id + model.safetensors) for
        transformers' ``SegformerForSemanticSegmentation.from_pretrained``; ``from_pretrained``
        here reads it back. Logits match transformers exactly with ``ln_eps_preset="hf"`` (its
        LayerNorm eps); other presets warn. Class names default to transformers' ``LABEL_i``."""
        return save_transformers(self, folder, class_names)
