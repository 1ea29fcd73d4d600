"""Segmentation networks in plain PyTorch: MiT encoder, all-MLP head, their composition
(any encoder + decoder from config specs), checkpoint conversion."""

from segformer.models.convert import load_encoder_weights, read_checkpoint
from segformer.models.head import AllMLPHead
from segformer.models.mit import LN_EPS_PRESETS, MixTransformer
from segformer.models.network import EncoderDecoder, segformer_net
from segformer.models.segformer import SegFormer
from segformer.models.upsample import upsample_argmax, upsample_cross_entropy
from segformer.models.variants import VARIANTS, Variant, get_variant

__all__ = [
    "LN_EPS_PRESETS",
    "VARIANTS",
    "AllMLPHead",
    "EncoderDecoder",
    "MixTransformer",
    "SegFormer",
    "Variant",
    "get_variant",
    "load_encoder_weights",
    "read_checkpoint",
    "segformer_net",
    "upsample_argmax",
    "upsample_cross_entropy",
]
