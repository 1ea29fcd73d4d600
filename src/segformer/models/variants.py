"""The SegFormer variants B0..B5: the one table the model, ``segformer-info`` and the configs read.

Encoder shapes are paper Table 6 as released (mlp_ratio 4 everywhere, sr 8/4/2/1: sequence
reduction R = sr²); the decoder width E is the paper's (256 for B0/B1, 768 for B2-B5; mmseg's
configs use 256 everywhere). File and Hub names are those the weights are published under.
"""

from __future__ import annotations

from dataclasses import dataclass

from segformer.errors import InputError


@dataclass(frozen=True)
class Variant:
    embed_dims: tuple[int, int, int, int]  # C_i of the four stages
    depths: tuple[int, int, int, int]  # transformer blocks per stage
    decoder_dim: int  # E, the all-MLP head's width
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    imagenet_file: str = ""  # the official ImageNet-1K weights, e.g. mit_b0.pth
    hub_imagenet: str = ""  # the same weights on the Hugging Face Hub
    hub_ade20k: str = ""  # fine-tuned on ADE20K (160k iterations)
    hub_cityscapes: str = ""  # fine-tuned on Cityscapes at 1024x1024 (160k iterations)


def _variant(name: str, dims: tuple, depths: tuple, decoder_dim: int, ade_size: int) -> Variant:
    return Variant(
        embed_dims=dims,
        depths=depths,
        decoder_dim=decoder_dim,
        imagenet_file=f"mit_{name}.pth",
        hub_imagenet=f"nvidia/mit-{name}",
        hub_ade20k=f"nvidia/segformer-{name}-finetuned-ade-{ade_size}-{ade_size}",
        hub_cityscapes=f"nvidia/segformer-{name}-finetuned-cityscapes-1024-1024",
    )


_WIDE = (64, 128, 320, 512)
VARIANTS: dict[str, Variant] = {
    "b0": _variant("b0", (32, 64, 160, 256), (2, 2, 2, 2), 256, 512),
    "b1": _variant("b1", _WIDE, (2, 2, 2, 2), 256, 512),
    "b2": _variant("b2", _WIDE, (3, 4, 6, 3), 768, 512),
    "b3": _variant("b3", _WIDE, (3, 4, 18, 3), 768, 512),
    "b4": _variant("b4", _WIDE, (3, 8, 27, 3), 768, 512),
    "b5": _variant("b5", _WIDE, (3, 6, 40, 3), 768, 640),  # B5's ADE20K run uses 640 crops
}


def get_variant(name: str) -> Variant:
    """The table row of ``name`` ("b0".."b5"), with an error listing the choices."""
    if name not in VARIANTS:
        raise InputError(f"variant={name!r}; expected one of {', '.join(VARIANTS)}")
    return VARIANTS[name]
