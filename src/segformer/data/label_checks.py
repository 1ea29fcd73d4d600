"""Label mistakes that train without an error and learn nothing, caught before training.

The classic one: binary masks saved as 0 / 255 in a 2-class dataset. 255 is the ignore index,
so every foreground pixel is ignored and the model learns "everything is background" with a
perfect loss. Another: a split whose labelled pixels are all one class (a wrong label map,
reduce_zero_label on 0/1 masks). `check_labels` reads a spread of masks of a split when
training starts (`data.label_check_files`, 0 = off) and raises or warns with the file names and
the `data.label_map` that fixes it; segformer-check-data runs the same checks on every mask.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from segformer.data.dataset import SegmentationDataset
from segformer.errors import InputError


@dataclass
class LabelScan:
    """What the masks read so far hold: stored values, pixels per class id, ignored pixels."""

    num_classes: int
    files: int = 0
    raw_seen: np.ndarray = field(default_factory=lambda: np.zeros(256, bool))
    pixels: np.ndarray = field(init=False)  # int64 (K,) after the label map
    ignored: int = 0
    first_file: Path | None = None

    def __post_init__(self) -> None:
        self.pixels = np.zeros(self.num_classes, np.int64)

    def add(
        self, raw_counts: np.ndarray, counts: np.ndarray, ignore_index: int, path: Path
    ) -> None:
        """One mask: bincounts (256,) of its stored values and of its train ids."""
        self.files += 1
        self.first_file = self.first_file or path
        self.raw_seen |= raw_counts > 0
        self.pixels += counts[: self.num_classes]
        self.ignored += int(counts[ignore_index])


def zero_255_problem(scan: LabelScan, ignore_index: int) -> str | None:
    """The message when the masks hold only 0 and 255 in a 2-class dataset (255 = ignore)."""
    values = set(np.flatnonzero(scan.raw_seen).tolist())
    if scan.num_classes != 2 or ignore_index != 255 or values != {0, 255}:
        return None
    return (
        f"the masks hold only the values 0 and 255 (e.g. {scan.first_file}, {scan.files} "
        "mask(s) read), and with 2 classes 255 is the ignore index: every foreground pixel would "
        "be ignored. If 255 marks the foreground, set data.label_map={0:0,255:1}; if 255 "
        "really means 'ignore', say so with data.label_map={0:0,1:1,255:255}"
    )


def single_class_problem(scan: LabelScan, class_names: Sequence[str]) -> str | None:
    """The message when the labelled pixels read are all one class (or none at all)."""
    present = np.flatnonzero(scan.pixels)
    if len(present) > 1 or len(class_names) < 2:
        return None
    if len(present) == 0:
        return (
            f"every pixel of the {scan.files} mask(s) read (e.g. {scan.first_file}) is ignored; "
            "check ignore_index, reduce_zero_label or data.label_map={stored value: class id}"
        )
    k = int(present[0])
    return (
        f"every labelled pixel of the {scan.files} mask(s) read (e.g. {scan.first_file}) is "
        f"class {k} ({class_names[k]}); if the masks store other classes under other values, "
        "map them with data.label_map={stored value: class id} (e.g. data.label_map={0:0,255:1} "
        "for 0/255 masks)"
    )


def scan_masks(dataset: SegmentationDataset, indices: Sequence[int]) -> LabelScan:
    """Read the masks `indices` of `dataset` (label map and checks applied)."""
    assert dataset.num_classes is not None
    scan = LabelScan(dataset.num_classes)
    for i in indices:
        path = dataset.samples[i][1]
        raw = dataset.read_raw_mask(path)
        mask = dataset.map_labels(raw, path)
        scan.add(
            np.bincount(raw.ravel(), minlength=256),
            np.bincount(mask.ravel(), minlength=256),
            dataset.ignore_index,
            path,
        )
    return scan


def check_labels(
    dataset: SegmentationDataset,
    split: str,
    class_names: Sequence[str],
    max_files: int,
    mapped: bool,
    strict: bool = True,
) -> None:
    """Read up to `max_files` masks of `split`, spread evenly over it. The 0/255 pattern (when
    the dataset has no label map: `mapped` False) is an error. One class only is an error when
    every mask of a `strict` split was read, else a warning (a sample may miss a rare class)."""
    n = len(dataset)
    if max_files <= 0 or n == 0:
        return
    indices = np.unique(np.linspace(0, n - 1, min(n, max_files)).round().astype(int))
    scan = scan_masks(dataset, indices.tolist())
    problem = None if mapped else zero_255_problem(scan, dataset.ignore_index)
    if problem:
        raise InputError(f"split {split!r}: {problem}")
    problem = single_class_problem(scan, class_names)
    if problem is None:
        return
    whole = len(indices) == n
    if whole and strict:
        raise InputError(
            f"split {split!r}: {problem}. (data.label_check_files=0 turns this check off)"
        )
    sample = "" if whole else f" ({len(indices)} of {n} masks read; segformer-check-data reads all)"
    warnings.warn(f"split {split!r}: {problem}{sample}", UserWarning, stacklevel=2)
