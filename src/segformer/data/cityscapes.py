"""Cityscapes (gtFine): 19 evaluation classes from the 34 label ids."""

from collections.abc import Sequence

import numpy as np

from segformer.data.datamodule import SegmentationDataModule
from segformer.data.files import Sample, index_files, pair_files
from segformer.data.labels import make_label_map

# cityscapesScripts labels.py: label id -> train id of the 19 evaluated classes; others ignored
LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
    23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes fine annotations. Uses *_gtFine_labelTrainIds.png when the split has them
    (cityscapesScripts createTrainIdLabelImgs), else maps *_gtFine_labelIds.png."""

    CLASSES = (
        "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
        "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
        "bus", "train", "motorcycle", "bicycle",
    )  # fmt: skip
    PALETTE = (
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    )  # fmt: skip
    LAYOUT = (
        "{root}/leftImg8bit/{train,val,test}/{city}/*_leftImg8bit.png and "
        "{root}/gtFine/{train,val,test}/{city}/*_gtFine_labelIds.png "
        "(or *_gtFine_labelTrainIds.png)"
    )

    def __init__(
        self,
        root: str,
        crop_size: int | Sequence[int] = (1024, 1024),
        scale: Sequence[int] = (2048, 1024),
        test_split: str = "val",  # test labels are not public
        **kwargs,
    ) -> None:
        super().__init__(root, crop_size=crop_size, scale=scale, test_split=test_split, **kwargs)

    def _uses_train_ids(self, split: str) -> bool:
        masks = (self.root / "gtFine" / split).glob("*/*_gtFine_labelTrainIds.png")
        return next(masks, None) is not None

    def list_samples(self, split: str) -> list[Sample]:
        kind = "labelTrainIds" if self._uses_train_ids(split) else "labelIds"
        return pair_files(
            index_files(self.root / "leftImg8bit" / split, ["_leftImg8bit.png"], recursive=True),
            index_files(self.root / "gtFine" / split, [f"_gtFine_{kind}.png"], recursive=True),
        )

    def label_map(self, split: str) -> np.ndarray | None:
        if self._uses_train_ids(split):
            return None
        return make_label_map(LABEL_TO_TRAIN_ID, default=self.ignore_index)
