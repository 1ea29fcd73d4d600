"""The LightningDataModule every on-disk dataset shares: splits, transforms, loaders, metadata.

A new on-disk dataset is a subclass of `SegmentationDataModule` that sets CLASSES, PALETTE and
LAYOUT and implements `list_samples(split)` (and `label_map(split)` when raw mask values are not
train ids); samples are made by `data.dataset.SegmentationDataset`.
"""

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from segformer.data.channels import ImageFormat
from segformer.data.collate import eval_collate
from segformer.data.dataset import SegmentationDataset
from segformer.data.files import Sample
from segformer.data.groups import choose_val_groups, hold_out, read_group_table, sample_groups
from segformer.data.label_checks import check_labels
from segformer.data.labels import default_palette, value_label_map
from segformer.data.sampler import ResumableSampler, ShardSampler
from segformer.data.transforms import Compose, eval_transform, train_transform
from segformer.errors import InputError, MissingFileError
from segformer.sizes import pair


class SegmentationDataModule(L.LightningDataModule):
    """Shared data module: splits, transforms, loaders, class metadata.

    root: dataset folder (see the subclass LAYOUT). batch_size: PER DEVICE. val_batch_size:
    val/test/predict batch (eval images keep their own size; a batch of mixed sizes is padded
    by data/collate.py and each image still runs at its own size). num_workers: None ->
    min(4, CPUs). pin_memory: None -> when CUDA is available. crop_size: (h, w) or int.
    scale: base (long, short) bounds of the train resize, sampled at ratio_range.
    cat_max_ratio / photometric / class_uniform: see transforms.train_transform. eval_resize:
    (long, short) to resize val/test images (not masks) in the loader; None leaves the eval
    resize to inference.
    eval: the dataset's inference settings ({mode, scale, align, crop, stride}) for the model
    config; kept as-is in `eval_settings`. seed: seeds shuffling and augmentation workers.

    Your own data (see data/channels.py, data/label_checks.py, transforms.train_transform):
    in_channels, bands, keep_alpha, mean, std, max_value, nodata: how images are read and
    normalised (`image_format`; nodata: no-data pixels, NaN/inf included, ignored). label_map:
    {stored mask value: class id}, replacing the dataset's own mapping; unnamed values are
    errors (ignore_index stays ignored). train_transforms: the augmentation steps (instantiated
    `_target_`s; albumentations ones are wrapped), replacing the paper's pipeline built from
    scale / ratio_range / cat_max_ratio / photometric / class_uniform; Normalize and Pad to
    crop_size always follow. label_check_files: masks of the train and val splits read at fit
    start to catch 0/255 masks and one-class splits (0 = off).

    Splits: train_split may join splits with "+" ("train+val", e.g. for a final model). Grouped
    validation (data/groups.py): group is a regular expression giving each sample's group (a
    drive, scene, patient) from its image path relative to root, group_file a table
    ``<image> <group>``; with val_groups (group names, or a fraction of the samples drawn as
    whole groups with seed) validation is those groups of the training split(s) and training
    the rest, so no group is on both sides (val_split is then unused). With a group but no
    val_groups, fit warns when val shares groups with train.

    cache_images: decode each split's images and masks once, at setup, and keep them in memory
    (shared with the loader workers): for datasets that fit in RAM on machines where decoding
    takes CPU from training (CamVid on 2 cores: PNG decoding was ~2/3 of the loading work).
    """

    CLASSES: tuple[str, ...] = ()
    PALETTE: Sequence[Sequence[int]] | None = None  # None -> default_palette
    LAYOUT: str = ""  # the expected folder layout, shown in errors

    def __init__(
        self,
        root: str | Path | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int | None = None,
        pin_memory: bool | None = None,
        crop_size: int | Sequence[int] = 512,
        scale: Sequence[int] = (2048, 512),
        ratio_range: Sequence[float] = (0.5, 2.0),
        cat_max_ratio: float = 0.75,
        photometric: bool = True,
        class_uniform: float = 0.0,
        ignore_index: int = 255,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        eval_resize: Sequence[int] | None = None,
        eval: Mapping[str, Any] | None = None,  # named like the config key the model reads
        seed: int = 0,
        in_channels: int = 3,
        bands: Sequence[int] | None = None,
        keep_alpha: bool = False,
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
        max_value: float = 255.0,
        nodata: float | str | None = None,
        label_map: Mapping[int, int] | None = None,
        train_transforms: Sequence[Any] | None = None,
        label_check_files: int = 64,
        group: str | None = None,
        group_file: str | None = None,
        val_groups: Sequence[str] | float | None = None,
        cache_images: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= ignore_index <= 255:
            raise InputError(f"ignore_index must fit a uint8 mask (0-255), got {ignore_index}")
        self.root = Path(root).expanduser() if root is not None else None
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.crop_size = pair(crop_size, "crop_size")
        self.ignore_index = ignore_index
        if isinstance(train_split, Sequence) and not isinstance(train_split, str):
            train_split = "+".join(train_split)  # a list from the command line: [train,val]
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        if group is not None and group_file is not None:
            raise InputError("give data.group (a pattern) or data.group_file (a table), not both")
        if val_groups is not None and group is None and group_file is None:
            raise InputError("data.val_groups needs data.group or data.group_file")
        self.group, self.group_file, self.val_groups = group, group_file, val_groups
        if val_groups is not None:  # validation is the held-out side (test keeps test_split)
            self.val_split = f"{self.train_split}:val_groups"
        self._grouped: tuple[list[Sample], list[Sample]] | None = None
        self.cache_images = cache_images
        self.eval_settings = dict(eval or {})
        self.seed = seed
        self.image_format = ImageFormat.from_dict(
            {
                "in_channels": in_channels,
                "bands": bands,
                "keep_alpha": keep_alpha,
                "mean": mean,
                "std": std,
                "max_value": max_value,
                "nodata": nodata,
            }
        )
        # stored mask value -> class id (named so, as `label_map(split)` is the dataset's own)
        self.value_map = (
            None if label_map is None else {int(k): int(v) for k, v in label_map.items()}
        )
        self.label_check_files = label_check_files
        self._labels_checked: set[str] = set()
        norm_mean, norm_std = self.image_format.mean_std()
        self.train_transform: Compose = train_transform(
            self.crop_size,
            pair(scale, "scale"),
            ratio_range,
            cat_max_ratio,
            ignore_index,
            photometric,
            class_uniform,
            train_transforms,
            norm_mean,
            norm_std,
        )
        self.eval_transform: Compose = eval_transform(
            None if eval_resize is None else pair(eval_resize, "eval_resize"), norm_mean, norm_std
        )
        self.datasets: dict[tuple[str, bool], Dataset] = {}

    # --- metadata
    @property
    def name(self) -> str:
        return type(self).__name__

    @property
    def class_names(self) -> list[str]:
        return list(self.CLASSES)

    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    @property
    def in_channels(self) -> int:
        """Channels of the images the model sees (`data.in_channels`)."""
        return self.image_format.in_channels

    @property
    def palette(self) -> np.ndarray:
        """uint8 (K, 3) RGB colour per class."""
        if self.PALETTE is None:
            return default_palette(self.num_classes)
        return np.asarray(self.PALETTE, np.uint8).reshape(self.num_classes, 3)

    @property
    def mask_palette(self) -> np.ndarray:
        """uint8 (K, 3) colours that decode RGB masks: only a palette the dataset or config
        names; the display default would silently turn unknown colours into ignored pixels."""
        if self.PALETTE is None:
            return np.zeros((0, 3), np.uint8)
        return self.palette

    # --- what a dataset subclass provides
    def list_samples(self, split: str) -> list[Sample]:
        """(image, mask) paths of `split`; raise FileNotFoundError for missing files/folders."""
        raise NotImplementedError(f"{self.name} must implement list_samples(split)")

    def label_map(self, split: str) -> np.ndarray | None:
        """Lookup table raw mask value -> train id for `split`; None when masks hold train ids."""
        return None

    # --- datasets
    def samples(self, split: str) -> list[Sample]:
        """The samples of `split`; with data.val_groups, train_split and val_split are the two
        sides of the grouped split."""
        if self.val_groups is not None and split in (self.train_split, self.val_split):
            train, val = self.grouped_split()
            return train if split == self.train_split else val
        return self.listed_samples(split)

    def listed_samples(self, split: str) -> list[Sample]:
        """`list_samples` of each "+"-joined part, with the dataset's name and expected layout
        in every error."""
        layout = f"Expected layout for {self.name}:\n{self.LAYOUT}"
        if self.root is None or not self.root.is_dir():
            raise MissingFileError(f"{self.name}: dataset root {self.root} not found. {layout}")
        try:
            samples = [s for part in split.split("+") for s in self.list_samples(part)]
        except FileNotFoundError as err:
            raise MissingFileError(f"{self.name} split {split!r}: {err}. {layout}") from err
        if not samples:
            raise InputError(f"{self.name}: split {split!r} under {self.root} is empty. {layout}")
        return samples

    def groups(self, samples: list[Sample]) -> list[str]:
        """The group of each sample (data.group or data.group_file)."""
        assert self.root is not None
        table = None if self.group_file is None else read_group_table(self.root / self.group_file)
        return sample_groups(samples, self.root, self.group, table)

    def grouped_split(self) -> tuple[list[Sample], list[Sample]]:
        """(train, val) samples: data.val_groups held out of the training split(s)."""
        if self._grouped is None:
            assert self.val_groups is not None
            pool = self.listed_samples(self.train_split)
            groups = self.groups(pool)
            held = choose_val_groups(groups, self.val_groups, self.seed)
            self._grouped = hold_out(pool, groups, held)
            rank_zero_info(
                f"{self.name}: grouped split of {self.train_split!r}: validation = groups "
                f"{sorted(held)} ({len(self._grouped[1])} samples), training = the other "
                f"{len(set(groups) - held)} groups ({len(self._grouped[0])} samples)"
            )
        return self._grouped

    def shared_groups(self) -> dict[str, int]:
        """Groups of the validation split that also occur in training: {group: val samples}."""
        train = set(self.groups(self.samples(self.train_split)))
        val = Counter(self.groups(self.samples(self.val_split)))
        return {g: n for g, n in sorted(val.items()) if g in train}

    def _label_map(self, split: str) -> np.ndarray | None:
        """The dataset's label map of `split` ("+"-joined parts must agree; a grouped val split
        comes from the training splits)."""
        if self.val_groups is not None and split == self.val_split:
            split = self.train_split
        maps = [self.label_map(part) for part in split.split("+")]
        for lut in maps[1:]:
            if (lut is None) != (maps[0] is None) or (
                lut is not None and not np.array_equal(lut, maps[0])
            ):
                raise InputError(f"{self.name}: splits {split!r} map mask values differently")
        return maps[0]

    def label_lookup(self, split: str) -> tuple[np.ndarray | None, np.ndarray | None]:
        """(lookup table stored value -> train id, allowed stored values) of `split`:
        `data.label_map` when given (unnamed values are errors), else `label_map(split)`."""
        if self.value_map is None:
            return self._label_map(split), None
        valid = set(range(self.num_classes)) | {self.ignore_index}
        bad = {raw: k for raw, k in self.value_map.items() if k not in valid}
        if bad:
            raise InputError(
                f"{self.name}: data.label_map maps {bad} to class ids outside 0-"
                f"{self.num_classes - 1} (num_classes={self.num_classes}) and ignore_index="
                f"{self.ignore_index}"
            )
        return value_label_map(self.value_map, self.ignore_index)

    def maps_labels(self, split: str) -> bool:
        """Whether stored mask values go through a map (data.label_map, the dataset's own
        label map, or a palette for RGB masks) rather than being class ids as they are."""
        return (
            self.value_map is not None
            or self._label_map(split) is not None
            or len(self.mask_palette) > 0
        )

    def make_dataset(self, split: str, train: bool) -> Dataset:
        lut, allowed = self.label_lookup(split)
        return SegmentationDataset(
            self.samples(split),
            self.train_transform if train else self.eval_transform,
            lut,
            self.mask_palette,
            self.ignore_index,
            self.num_classes,
            allowed,
            self.image_format,
        )

    def dataset(self, split: str, train: bool) -> Dataset:
        """The (cached) dataset of `split` with the train or the eval transform."""
        if (split, train) not in self.datasets:
            dataset = self.make_dataset(split, train)
            if self.cache_images and isinstance(dataset, SegmentationDataset):
                start = time.perf_counter()
                size = dataset.preload(max(1, os.cpu_count() or 1))
                rank_zero_info(
                    f"{self.name}: {split!r} decoded into memory ({len(dataset)} samples, "
                    f"{size / 2**20:.0f} MiB, {time.perf_counter() - start:.1f} s)"
                )
            self.datasets[split, train] = dataset
        return self.datasets[split, train]

    def setup(self, stage: str = "fit") -> None:
        # build only what the stage needs, so e.g. a missing test split does not block training
        splits = {
            "fit": [(self.train_split, True), (self.val_split, False)],
            "validate": [(self.val_split, False)],
            "test": [(self.test_split, False)],
            "predict": [(self.test_split, False)],
        }[stage]
        for split, train in splits:
            self.dataset(split, train)
        if stage == "fit":
            self.check_labels(self.train_split, strict=True)
            self.check_labels(self.val_split, strict=False)
            if (self.group or self.group_file) and self.val_groups is None:
                shared = self.shared_groups()
                if shared:
                    rank_zero_warn(
                        f"{self.name}: {sum(shared.values())} validation samples belong to groups "
                        f"that training also has ({', '.join(shared)}): validation scores "
                        "measure seen groups; data.val_groups holds whole groups out instead"
                    )

    def check_labels(self, split: str, strict: bool = True) -> None:
        """data/label_checks.py on `split` (once per split; files datasets only)."""
        dataset = self.dataset(split, split == self.train_split)
        if not isinstance(dataset, SegmentationDataset) or split in self._labels_checked:
            return
        check_labels(
            dataset,
            split,
            self.class_names,
            self.label_check_files,
            self.maps_labels(split),
            strict=strict,
        )
        self._labels_checked.add(split)

    # --- loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split, train)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if train:
            if len(dataset) // world < self.batch_size:
                raise InputError(
                    f"{self.name}: train split {split!r} has {len(dataset)} samples, fewer than "
                    f"batch_size={self.batch_size} per process x {world} processes (the last "
                    "incomplete batch is dropped)"
                )
            sampler = ResumableSampler(
                len(dataset), self.batch_size, self.seed, rank, world, self._batches_done
            )
        else:
            sampler = ShardSampler(len(dataset), rank, world)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.val_batch_size,
            sampler=sampler,
            drop_last=train,
            # eval images keep their size: mixed sizes are padded, run one size at a time
            collate_fn=None if train else partial(eval_collate, ignore_index=self.ignore_index),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            # worker base seeds from a generator of our own, not from torch's global RNG, which
            # must advance only with training (dropout, drop path) for exact resumption
            generator=torch.Generator().manual_seed(self.seed + rank),
        )

    def _batches_done(self) -> int:
        """Training batches this process has consumed so far (restored on resume)."""
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches if trainer else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_split, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_split, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_split, train=False)
