"""A custom dataset in a plain folder layout; classes, palette and label handling from config."""

from collections.abc import Sequence

import numpy as np

from segformer.data.datamodule import SegmentationDataModule
from segformer.data.files import MASK_SUFFIXES, Sample, index_files, pair_files, read_split_list
from segformer.data.labels import reduce_zero_label_map


class FolderDataModule(SegmentationDataModule):
    """Images and masks matched by file stem (any image extension; lossless masks).

    Masks are index images (PNG mode P or L: pixel = class id, ignore_index ignored) or RGB
    images in `palette` colours (other colours are ignored). reduce_zero_label: 0 -> ignore,
    v -> v - 1 (for masks where 0 means "unlabelled").
    """

    LAYOUT = (
        "{root}/images/{split}/<stem>.<jpg|png|...> and {root}/masks/{split}/<stem>.png; or, "
        "with split lists {root}/splits/{split}.txt (one stem per line), "
        "{root}/images/<stem>.<ext> and {root}/masks/<stem>.png"
    )

    def __init__(
        self,
        root: str,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        reduce_zero_label: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(root, **kwargs)
        # per-instance metadata shadows the class attributes the base reads
        self.CLASSES = tuple(classes)
        self.PALETTE = palette
        self.reduce_zero_label = reduce_zero_label
        if palette is not None and len(palette) != len(classes):
            raise ValueError(f"palette has {len(palette)} colours for {len(classes)} classes")

    def list_samples(self, split: str) -> list[Sample]:
        split_list = self.root / "splits" / f"{split}.txt"
        if split_list.is_file():
            images = index_files(self.root / "images")
            masks = index_files(self.root / "masks", MASK_SUFFIXES)
            return pair_files(images, masks, read_split_list(split_list))
        images = index_files(self.root / "images" / split)
        return pair_files(images, index_files(self.root / "masks" / split, MASK_SUFFIXES))

    def label_map(self, split: str) -> np.ndarray | None:
        return reduce_zero_label_map(self.ignore_index) if self.reduce_zero_label else None
