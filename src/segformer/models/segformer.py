"""SegFormer = MiT encoder + all-MLP head, logits at H/4 upsampled bilinearly to the input."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segformer.models.convert import adapt_in_channels, load_exact, read_checkpoint
from segformer.models.head import AllMLPHead
from segformer.models.mit import MixTransformer
from segformer.models.upsample import upsample_argmax
from segformer.models.variants import get_variant


class SegFormer(nn.Module):
    """SegFormer-B0..B5 (``variant`` "b0".."b5", see ``variants.VARIANTS``).

    ``decoder_dim`` None = the variant's E from the paper (256 for B0/B1, 768 for B2-B5).
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

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, K, ceil(H/4), ceil(W/4)) (channels-last)."""
        return self.head(self.encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> logits (B, K, H, W), bilinear with align_corners=False.

        The logits come channels-last, where bilinear upsampling vectorises over the K classes.
        """
        logits = self.forward_logits(x)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> class map (B, H, W) int64: forward(x).argmax(1) but for near-ties."""
        return upsample_argmax(self.forward_logits(x), x.shape[-2:])

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
        **kwargs: Any,
    ) -> SegFormer:
        """Load any supported checkpoint (format auto-detected, see ``convert.py``), in eval mode.

        The variant and decoder width come from the weights; ``variant`` only checks them.
        Encoder-only checkpoints (ImageNet MiT, mmseg) leave the head randomly initialised. A
        ``num_classes`` other than the checkpoint's re-initialises the classifier (with a
        warning). The LayerNorm eps preset follows the source of the weights unless
        ``ln_eps_preset`` is given. ``in_channels`` defaults to the checkpoint's; other than
        that, 3-channel weights are adapted (``convert.adapt_input_conv``). Other ``kwargs`` go
        to the constructor.
        """
        ckpt = read_checkpoint(path)
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
