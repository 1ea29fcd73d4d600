"""SegFormer = MiT encoder + all-MLP head (``network.EncoderDecoder`` with the paper's parts),
and loading any supported checkpoint into a network."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segformer.errors import InputError
from segformer.models.convert import (
    INPUT_CONV,
    adapt_in_channels,
    load_exact,
    read_checkpoint,
    save_transformers,
)
from segformer.models.network import EncoderDecoder, segformer_net


class SegFormer(EncoderDecoder):
    """SegFormer-B0..B5 (``variant`` "b0".."b5", see ``variants.VARIANTS``).

    ``decoder_dim`` None = the variant's E from the paper (256 for B0/B1, 768 for B2-B5).
    ``ln_eps_preset`` picks the LayerNorm eps of the code the weights come from: "official"
    (NVlabs), "hf" (transformers) or "mmseg" (``mit.LN_EPS_PRESETS``). ``in_channels``: bands of
    the input images (3 = RGB; pretrained RGB weights adapt, see ``convert.adapt_input_conv``).
    ``num_classes=1``: a binary network, foreground where the sigmoid exceeds ``threshold``.
    Any image size H, W >= 1 runs (``network.pad_small``).
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
        threshold: float = 0.5,
    ) -> None:
        net = segformer_net(variant, decoder_dim, drop_path_rate, dropout, ln_eps_preset)
        super().__init__(net, num_classes, in_channels, threshold)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        num_classes: int | None = None,
        variant: str | None = None,
        revision: str | None = None,
        **kwargs: Any,
    ) -> EncoderDecoder:
        """Load any supported checkpoint (format auto-detected, see ``convert.py``), in eval mode.

        ``path``: a file, a transformers folder, or a Hugging Face Hub repo id such as
        ``nvidia/segformer-b0-finetuned-ade-512-512`` (``revision``: branch, tag or commit, or
        ``owner/name@revision``), fetched into / read from the Hub cache (``HF_HUB_OFFLINE=1``:
        the cache only).

        The variant and decoder width come from the weights; ``variant`` only checks them.
        A checkpoint of this project whose network is another composition (``model.encoder`` /
        ``model.decoder``) is rebuilt from the specs it records (an ``EncoderDecoder``; the
        classes it names must be importable). Encoder-only checkpoints (ImageNet MiT, mmseg)
        leave the head randomly initialised. A ``num_classes`` other than the checkpoint's
        re-initialises the classifier (with a warning). The LayerNorm eps preset follows the
        source of the weights unless ``ln_eps_preset`` is given. ``in_channels`` defaults to the
        checkpoint's; other than that, 3-channel weights are adapted
        (``convert.adapt_input_conv``). A binary network's ``threshold`` is the one it was
        trained with (our checkpoints record it; 0.5 otherwise) unless given. Other ``kwargs``
        go to the constructor.
        """
        ckpt = read_checkpoint(path, revision)
        if variant is not None and variant != ckpt.variant:
            found = f"MiT-{ckpt.variant}" if ckpt.variant else "a network of another encoder"
            raise InputError(f"{path}: holds {found} weights, not {variant} as asked")
        if ckpt.decoder_dim is not None:
            given = kwargs.setdefault("decoder_dim", ckpt.decoder_dim)
            if given != ckpt.decoder_dim:
                raise InputError(
                    f"{path}: decoder_dim={given} requested, the checkpoint has {ckpt.decoder_dim}"
                )
        in_channels = kwargs.setdefault("in_channels", ckpt.in_channels)
        threshold = kwargs.setdefault("threshold", ckpt.threshold)
        num_classes = num_classes or ckpt.num_classes or 150
        if ckpt.net is not None:  # our checkpoint of another composition: its own specs
            other = sorted(set(kwargs) - {"decoder_dim", "in_channels", "threshold"})
            if other:
                raise InputError(
                    f"{path}: the network is rebuilt from the specs the checkpoint records; "
                    f"{', '.join(other)} cannot change it"
                )
            model = EncoderDecoder(ckpt.net, num_classes, in_channels, threshold)
        else:
            kwargs.setdefault("ln_eps_preset", ckpt.ln_eps_preset)
            model = cls(variant=ckpt.variant, num_classes=num_classes, **kwargs)
        expected = set(model.state_dict())
        state = ckpt.state_dict
        if INPUT_CONV in state:  # MiT's first conv: RGB weights adapt to other band counts
            state = adapt_in_channels(ckpt, in_channels, path)
        if ckpt.decoder_dim is None and ckpt.net is None:  # encoder-only weights
            expected = {k for k in expected if k.startswith("encoder.")}
        elif ckpt.num_classes is not None and num_classes != ckpt.num_classes:
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
