"""COCO-Stuff 164k: 171 evaluated classes (80 things + 91 stuff) of the 182 stuffthingmaps ids.

Two layouts, per split (mmseg's ``data/coco_stuff164k``):

- mmseg-converted (``tools/dataset_converters/coco_stuff164k.py``): train ids 0-170, 255 ignored,
  in ``annotations/{split}/*_labelTrainIds.png``; used whenever the split has such files (the
  converter writes them next to the raw maps);
- raw ``stuffthingmaps_trainval2017.zip`` unzipped into ``annotations/``: ``{split}/*.png`` with
  the 0-based COCO ids 0-181 (255 unlabelled), mapped here with the converter's table.
"""

from collections.abc import Sequence

import numpy as np

from segformer.data.datamodule import SegmentationDataModule
from segformer.data.files import Sample, index_files, pair_files
from segformer.data.labels import make_label_map

# 0-based stuffthingmaps ids that name no COCO 2017 category (the thing ids COCO skips, 12, 26,
# 29, 30, 45, 66, 68, 69, 71, 83 and 91 one-based): not evaluated, ignored here. mmseg's converter
# leaves such values as they are; they do not occur in the released maps.
UNUSED_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
# raw id -> train id: the remaining 171 ids in order (= mmseg's clsID_to_trID)
RAW_TO_TRAIN_ID = {raw: i for i, raw in enumerate(r for r in range(182) if r not in UNUSED_IDS)}
TRAIN_IDS_SUFFIX = "_labelTrainIds.png"


class COCOStuffDataModule(SegmentationDataModule):
    """COCO-Stuff 164k with mmseg's class names. The display palette is the default (distinct
    colours): mmseg's COCO-Stuff palette repeats colours."""

    CLASSES = (
        "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
        "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat",
        "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack",
        "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
        "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket",
        "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
        "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake",
        "chair", "couch", "potted plant", "bed", "dining table", "toilet", "tv", "laptop",
        "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
        "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
        "toothbrush", "banner", "blanket", "branch", "bridge", "building-other", "bush",
        "cabinet", "cage", "cardboard", "carpet", "ceiling-other", "ceiling-tile", "cloth",
        "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff", "dirt",
        "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
        "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass",
        "gravel", "ground-other", "hill", "house", "leaves", "light", "mat", "metal",
        "mirror-stuff", "moss", "mountain", "mud", "napkin", "net", "paper", "pavement",
        "pillow", "plant-other", "plastic", "platform", "playingfield", "railing", "railroad",
        "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
        "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other",
        "table", "tent", "textile-other", "towel", "tree", "vegetable", "wall-brick",
        "wall-concrete", "wall-other", "wall-panel", "wall-stone", "wall-tile", "wall-wood",
        "water-other", "waterdrops", "window-blind", "window-other", "wood",
    )  # fmt: skip
    LAYOUT = (
        "{root}/images/{train2017,val2017}/*.jpg and "
        "{root}/annotations/{train2017,val2017}/*_labelTrainIds.png (mmseg's converter: "
        "train ids 0-170, 255 ignored) or *.png (stuffthingmaps_trainval2017.zip: ids 0-181, "
        "255 unlabelled)"
    )

    def __init__(
        self,
        root: str,
        crop_size: int | Sequence[int] = (512, 512),
        scale: Sequence[int] = (2048, 512),
        train_split: str = "train2017",
        val_split: str = "val2017",
        test_split: str = "val2017",  # test-dev labels are not public
        **kwargs,
    ) -> None:
        super().__init__(
            root,
            crop_size=crop_size,
            scale=scale,
            train_split=train_split,
            val_split=val_split,
            test_split=test_split,
            **kwargs,
        )

    def _uses_train_ids(self, split: str) -> bool:
        folder = self.root / "annotations" / split
        return next(folder.glob(f"*{TRAIN_IDS_SUFFIX}"), None) is not None

    def list_samples(self, split: str) -> list[Sample]:
        images = index_files(self.root / "images" / split)
        folder = self.root / "annotations" / split
        if self._uses_train_ids(split):
            masks = index_files(folder, [TRAIN_IDS_SUFFIX])
        else:
            masks = index_files(folder, [".png"])
        return pair_files(images, masks)

    def label_map(self, split: str) -> np.ndarray | None:
        if self._uses_train_ids(split):
            return None
        return make_label_map(RAW_TO_TRAIN_ID, default=self.ignore_index)
