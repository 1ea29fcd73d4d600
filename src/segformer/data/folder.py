"""A custom dataset in a plain folder layout or mmseg's custom layout; classes, palette and label
handling from config."""

from collections.abc import Mapping, Sequence

import numpy as np

from segformer.data.datamodule import SegmentationDataModule
from segformer.data.files import (
    IMAGE_SUFFIXES,
    MASK_SUFFIXES,
    Sample,
    index_files,
    pair_files,
    read_split_list,
)
from segformer.data.labels import reduce_zero_label_map
from segformer.errors import InputError, MissingFileError

# a directory or split file per split: one path with an optional "{split}", or {split: path}
PerSplit = str | Mapping[str, str]


class FolderDataModule(SegmentationDataModule):
    """Images and masks matched by file stem (any image extension; lossless masks).

    Masks are index images (PNG mode P or L: pixel = class id, ignore_index ignored) or RGB
    images in `palette` colours (other colours are ignored). reduce_zero_label: 0 -> ignore,
    v -> v - 1 (for masks where 0 means "unlabelled"); label_map (base class) maps any stored
    values instead.

    mmseg's custom layout (CustomDataset / BaseSegDataset): with `img_dir` set, images are
    found recursively under root/img_dir with `img_suffix` and masks under root/ann_dir with
    `seg_map_suffix`, paired by their path minus the suffix, optionally listed by `split_file`
    (mmseg 0.x `split`, 1.x `ann_file`: one name per line, relative, no suffix). Each of
    img_dir, ann_dir and split_file is one path with an optional "{split}" (replaced by the
    split name, e.g. train_split) or a mapping {split name: path}, paths relative to root.
    Suffixes default to any image / mask suffix (mmseg: ".jpg" / ".png").
    """

    LAYOUT = (
        "{root}/images/{split}/<stem>.<jpg|png|...> and {root}/masks/{split}/<stem>.png; or, "
        "with split lists {root}/splits/{split}.txt (one stem per line), "
        "{root}/images/<stem>.<ext> and {root}/masks/<stem>.png; or mmseg's layout with "
        "data.img_dir, data.ann_dir (+ img_suffix, seg_map_suffix, split_file)"
    )

    def __init__(
        self,
        root: str,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]] | None = None,
        reduce_zero_label: bool = False,
        img_dir: PerSplit | None = None,
        ann_dir: PerSplit | None = None,
        img_suffix: str | None = None,
        seg_map_suffix: str | None = None,
        split_file: PerSplit | None = None,
        **kwargs,
    ) -> None:
        super().__init__(root, **kwargs)
        # per-instance metadata shadows the class attributes the base reads
        self.CLASSES = tuple(classes)
        self.PALETTE = palette
        self.reduce_zero_label = reduce_zero_label
        if palette is not None and len(palette) != len(classes):
            raise InputError(f"palette has {len(palette)} colours for {len(classes)} classes")
        if reduce_zero_label and self.value_map is not None:
            raise InputError(
                "give data.reduce_zero_label or data.label_map, not both (label_map can say "
                "0 -> 255 itself)"
            )
        if (img_dir is None) != (ann_dir is None):
            raise InputError("mmseg layout: give both data.img_dir and data.ann_dir")
        if img_dir is None and (img_suffix or seg_map_suffix or split_file):
            raise InputError(
                "data.img_suffix, data.seg_map_suffix and data.split_file belong to mmseg's "
                "layout: set data.img_dir and data.ann_dir too"
            )
        self.img_dir, self.ann_dir, self.split_file = img_dir, ann_dir, split_file
        self.img_suffix, self.seg_map_suffix = img_suffix, seg_map_suffix

    @staticmethod
    def _for_split(value: PerSplit, split: str, key: str) -> str:
        if isinstance(value, Mapping):
            if split not in value:
                raise MissingFileError(f"data.{key} names no path for split {split!r}")
            return value[split]
        return value.replace("{split}", split)

    def _mmseg_samples(self, split: str) -> list[Sample]:
        assert self.img_dir is not None and self.ann_dir is not None
        image_suffixes = [self.img_suffix] if self.img_suffix else IMAGE_SUFFIXES
        mask_suffixes = [self.seg_map_suffix] if self.seg_map_suffix else MASK_SUFFIXES
        images = index_files(
            self.root / self._for_split(self.img_dir, split, "img_dir"), image_suffixes, True
        )
        masks = index_files(
            self.root / self._for_split(self.ann_dir, split, "ann_dir"), mask_suffixes, True
        )
        keys = None
        if self.split_file is not None:
            keys = read_split_list(
                self.root / self._for_split(self.split_file, split, "split_file")
            )
        return pair_files(images, masks, keys)

    def list_samples(self, split: str) -> list[Sample]:
        if self.img_dir is not None:
            return self._mmseg_samples(split)
        split_list = self.root / "splits" / f"{split}.txt"
        if split_list.is_file():
            images = index_files(self.root / "images")
            masks = index_files(self.root / "masks", MASK_SUFFIXES)
            return pair_files(images, masks, read_split_list(split_list))
        images = index_files(self.root / "images" / split)
        return pair_files(images, index_files(self.root / "masks" / split, MASK_SUFFIXES))

    def label_map(self, split: str) -> np.ndarray | None:
        return reduce_zero_label_map(self.ignore_index) if self.reduce_zero_label else None
