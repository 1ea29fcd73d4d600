"""Datasets and LightningDataModules; a sample is {"image", "mask", "name"} (see base.py)."""

from segformer.data.ade20k import ADE20KDataModule
from segformer.data.base import SegmentationDataModule, SegmentationDataset
from segformer.data.camvid import CamVidDataModule
from segformer.data.cityscapes import CityscapesDataModule
from segformer.data.folder import FolderDataModule
from segformer.data.synthetic import SyntheticDataModule
from segformer.data.voc import VOCDataModule

__all__ = [
    "ADE20KDataModule",
    "CamVidDataModule",
    "CityscapesDataModule",
    "FolderDataModule",
    "SegmentationDataModule",
    "SegmentationDataset",
    "SyntheticDataModule",
    "VOCDataModule",
]
