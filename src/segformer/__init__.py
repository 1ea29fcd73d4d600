"""SegFormer: a faithful, fast SegFormer for PyTorch Lightning + Hydra."""

from segformer.models.segformer import SegFormer

__all__ = ["SegFormer"]
__version__ = "0.1.0"
