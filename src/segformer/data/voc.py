"""PASCAL VOC 2012 segmentation, optionally with the SBD augmented masks (SegmentationClassAug)."""

from segformer.data.datamodule import SegmentationDataModule
from segformer.data.files import MASK_SUFFIXES, Sample, index_files, pair_files, read_split_list


class VOCDataModule(SegmentationDataModule):
    """VOC2012: 20 classes + background; the 255 object borders stay ignored.

    Masks come from SegmentationClass (palette PNGs) and, for ids only SBD labels, from
    SegmentationClassAug when that folder exists, so train_split="train_aug" (the 10,582-image
    list, placed in ImageSets/Segmentation) trains on the augmented set like mmseg.
    """

    CLASSES = (
        "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
        "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
        "sheep", "sofa", "train", "tvmonitor",
    )  # fmt: skip
    # PALETTE None: the VOC colour map is labels.default_palette
    LAYOUT = (
        "{root} = VOCdevkit/VOC2012 with JPEGImages/*.jpg, SegmentationClass/*.png, "
        "ImageSets/Segmentation/{train,val}.txt; optional SegmentationClassAug/*.png and "
        "ImageSets/Segmentation/train_aug.txt"
    )

    def __init__(self, root: str, test_split: str = "val", **kwargs) -> None:
        super().__init__(root, test_split=test_split, **kwargs)

    def list_samples(self, split: str) -> list[Sample]:
        masks = index_files(self.root / "SegmentationClass", MASK_SUFFIXES)
        if (self.root / "SegmentationClassAug").is_dir():
            # the VOC annotation wins where both exist
            masks = {**index_files(self.root / "SegmentationClassAug", MASK_SUFFIXES), **masks}
        keys = read_split_list(self.root / "ImageSets" / "Segmentation" / f"{split}.txt")
        return pair_files(index_files(self.root / "JPEGImages", [".jpg"]), masks, keys)
