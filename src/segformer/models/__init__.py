"""SegFormer networks in plain PyTorch: MiT encoder, all-MLP head, checkpoint conversion."""

from segformer.models.convert import load_encoder_weights, read_checkpoint
from segformer.models.head import AllMLPHead
from segformer.models.mit import LN_EPS_PRESETS, MixTransformer
from segformer.models.segformer import SegFormer
from segformer.models.upsample import upsample_argmax, upsample_cross_entropy
from segformer.models.variants import VARIANTS, Variant, get_variant

__all__ = [
    "LN_EPS_PRESETS",
    "VARIANTS",
    "AllMLPHead",
    "MixTransformer",
    "SegFormer",
    "Variant",
    "get_variant",
    "load_encoder_weights",
    "read_checkpoint",
    "upsample_argmax",
    "upsample_cross_entropy",
]
