"""Datasets and LightningDataModules; a sample is {"image", "mask", "name"} (see dataset.py).

files.py (suffixes, pairing, split lists), labels.py (label maps, palettes), reading.py (images
and masks), dataset.py (samples), datamodule.py (the shared LightningDataModule), transforms.py;
one module per dataset.

The names below are imported on first use, so that reading images (``segformer.data.reading``,
as predict does) does not import Lightning with the data modules: 4 s of every command's start.
"""

import importlib

_MODULE_OF = {
    "ADE20KDataModule": "ade20k",
    "CamVidDataModule": "camvid",
    "CityscapesDataModule": "cityscapes",
    "FolderDataModule": "folder",
    "SegmentationDataModule": "datamodule",
    "SegmentationDataset": "dataset",
    "SyntheticDataModule": "synthetic",
    "VOCDataModule": "voc",
    "IMAGE_SUFFIXES": "files",
    "MASK_SUFFIXES": "files",
    "default_palette": "labels",
    "read_image": "reading",
    "read_mask": "reading",
}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> object:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
