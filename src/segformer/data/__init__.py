"""Datasets and LightningDataModules; a sample is {"image", "mask", "name"} (see dataset.py).

files.py (suffixes, pairing, split lists), labels.py (label maps, palettes), reading.py (images
and masks), dataset.py (samples), datamodule.py (the shared LightningDataModule), transforms.py;
one module per dataset.
"""

from segformer.data.ade20k import ADE20KDataModule
from segformer.data.camvid import CamVidDataModule
from segformer.data.cityscapes import CityscapesDataModule
from segformer.data.datamodule import SegmentationDataModule
from segformer.data.dataset import SegmentationDataset
from segformer.data.files import IMAGE_SUFFIXES, MASK_SUFFIXES
from segformer.data.folder import FolderDataModule
from segformer.data.labels import default_palette
from segformer.data.reading import read_image, read_mask
from segformer.data.synthetic import SyntheticDataModule
from segformer.data.voc import VOCDataModule

__all__ = [
    "IMAGE_SUFFIXES",
    "MASK_SUFFIXES",
    "ADE20KDataModule",
    "CamVidDataModule",
    "CityscapesDataModule",
    "FolderDataModule",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SyntheticDataModule",
    "VOCDataModule",
    "default_palette",
    "read_image",
    "read_mask",
]
