"""SegFormer networks in plain PyTorch: MiT encoder, all-MLP head, checkpoint conversion."""

from segformer.models.convert import load_encoder_weights, read_checkpoint
from segformer.models.head import AllMLPHead
from segformer.models.mit import LN_EPS_PRESETS, MIT_VARIANTS, MixTransformer
from segformer.models.segformer import SegFormer
from segformer.models.upsample import upsample_argmax, upsample_cross_entropy

__all__ = [
    "LN_EPS_PRESETS",
    "MIT_VARIANTS",
    "AllMLPHead",
    "MixTransformer",
    "SegFormer",
    "load_encoder_weights",
    "read_checkpoint",
    "upsample_argmax",
    "upsample_cross_entropy",
]
