"""A dataset: a SegmentationDataModule subclass listing (image, mask) pairs per split. Reading,
augmentation, loaders, metrics and prediction pictures come with the base class."""

from __future__ import annotations

import csv
from pathlib import Path

from segformer.data.datamodule import SegmentationDataModule
from segformer.errors import MissingFileError


class CsvPairsDataModule(SegmentationDataModule):
    """``{root}/{split}.csv``: one ``image,mask`` row per sample, paths relative to root."""

    CLASSES = ("background", "crop", "weed")
    PALETTE = ((0, 0, 0), (0, 160, 0), (200, 40, 40))
    LAYOUT = "{root}/{split}.csv with rows image,mask (paths relative to root)"

    def list_samples(self, split: str) -> list[tuple[Path, Path]]:
        table = self.root / f"{split}.csv"
        if not table.is_file():
            raise MissingFileError(f"{table}: no such file ({self.LAYOUT})")
        with table.open(newline="") as f:
            return [(self.root / image, self.root / mask) for image, mask in csv.reader(f)]
