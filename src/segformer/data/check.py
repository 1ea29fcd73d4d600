"""Scan a dataset split for bad files and summarise it: image sizes, class pixels, class weights.

The functions behind segformer-check-data (segformer/check_data.py). Samples are read as the
dataset reads them (label map, palette, range check) but without the random train transforms,
and a bad file is reported, not raised, so one scan lists every problem of the split.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from rich.console import Console
from rich.progress import track
from rich.table import Table
from rich.text import Text

from segformer.data.datamodule import SegmentationDataModule
from segformer.data.dataset import SegmentationDataset
from segformer.data.reading import read_image

T = TypeVar("T")

# what a bad file raises (see reading.py and dataset.py); anything else is a bug and propagates
DATA_ERRORS = (OSError, ValueError)


@dataclass
class SampleReport:
    """One (image, mask) pair: its problems as (file, message), the image size, class pixels."""

    problems: list[tuple[Path, str]] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (W, H); None when the image is unreadable
    counts: np.ndarray | None = None  # int64 (256,) pixels per train id; None when mask is bad


def _attempt(problems: list[tuple[Path, str]], file: Path, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except DATA_ERRORS as err:
        problems.append((file, str(err)))
        return None


def check_sample(dataset: SegmentationDataset, index: int) -> SampleReport:
    """Read sample `index` like `dataset.read`, but collect every problem instead of raising
    the first: a corrupt image and a bad mask of the same pair are both reported."""
    image_path, mask_path = dataset.samples[index]
    report = SampleReport()
    image = _attempt(report.problems, image_path, lambda: read_image(image_path))
    mask = _attempt(report.problems, mask_path, lambda: dataset.read_mask(mask_path))
    if image is not None:
        report.size = (image.shape[1], image.shape[0])
    if mask is not None:
        report.counts = np.bincount(mask.ravel(), minlength=256)
    if image is not None and mask is not None:
        _attempt(
            report.problems,
            mask_path,
            lambda: dataset.check_size(image, mask, image_path, mask_path),
        )
    return report


@dataclass
class SplitReport:
    """What a scan of one split found; pixel counts come from the readable masks."""

    split: str
    root: Path | None
    class_names: list[str]
    ignore_index: int
    samples: int = 0
    problems: list[tuple[Path, str]] = field(default_factory=list)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)  # (W, H) -> images
    pixels: np.ndarray = field(init=False)  # int64 (K,) labelled pixels per class
    image_pixels: np.ndarray = field(init=False)  # int64 (K,) pixels of the masks holding c
    ignored: int = 0

    def __post_init__(self) -> None:
        self.pixels = np.zeros(len(self.class_names), np.int64)
        self.image_pixels = np.zeros(len(self.class_names), np.int64)

    @property
    def bad_files(self) -> set[Path]:
        return {file for file, _ in self.problems}

    def add(self, sample: SampleReport) -> None:
        self.samples += 1
        self.problems += sample.problems
        if sample.size is not None:
            self.sizes[sample.size] += 1
        if sample.counts is not None:
            counts = sample.counts[: len(self.class_names)]
            self.pixels += counts
            self.image_pixels[counts > 0] += sample.counts.sum()
            self.ignored += int(sample.counts[self.ignore_index])


def check_split(
    datamodule: SegmentationDataModule, split: str, num_workers: int | None = None
) -> SplitReport:
    """Scan every sample of `split` with `num_workers` threads (None: one per CPU; decoding
    releases the GIL). Missing root, empty split and unpaired files are one problem each."""
    report = SplitReport(split, datamodule.root, datamodule.class_names, datamodule.ignore_index)
    try:
        dataset = datamodule.make_dataset(split, train=False)
        if not isinstance(dataset, SegmentationDataset):
            raise ValueError(
                f"{datamodule.name} has no files to check: its samples are generated in memory"
            )
    except DATA_ERRORS as err:
        report.problems.append((datamodule.root or Path(datamodule.name), str(err)))
        return report
    with ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
        samples = pool.map(lambda i: check_sample(dataset, i), range(len(dataset)))
        for sample in track(samples, f"checking {split}", total=len(dataset), transient=True):
            report.add(sample)
    return report


def median_frequency_weights(pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015): freq_c = pixels of class c / pixels
    of the images in which c appears, w_c = median(freq) / freq_c. Absent classes get 0."""
    present = pixels > 0
    weights = np.zeros(len(pixels))
    if present.any():
        freq = pixels[present] / image_pixels[present]
        weights[present] = np.median(freq) / freq
    return weights


def _relative(file: Path, root: Path | None) -> str:
    inside = root is not None and file != root and file.is_relative_to(root)
    return str(file.relative_to(root)) if inside else str(file)


def print_report(report: SplitReport, console: Console) -> None:
    """Problems, image sizes, class histogram and weights of one split as rich tables."""
    if report.problems:
        table = Table(title=f"{report.split}: problems", title_justify="left")
        table.add_column("file", overflow="fold")
        table.add_column("problem", overflow="fold")
        for file, problem in report.problems:
            table.add_row(Text(_relative(file, report.root)), Text(problem))  # not markup
        console.print(table)
    if report.sizes:
        table = Table(title=f"{report.split}: image sizes", title_justify="left")
        table.add_column("W x H")
        table.add_column("images", justify="right")
        for (w, h), n in report.sizes.most_common():
            table.add_row(f"{w} x {h}", str(n))
        console.print(table)
    total = int(report.pixels.sum()) + report.ignored
    if total:
        weights = median_frequency_weights(report.pixels, report.image_pixels)
        table = Table(title=f"{report.split}: class pixels", title_justify="left")
        for name in ("id", "class", "pixels", "%", "median-freq weight"):
            table.add_column(name, justify="left" if name == "class" else "right")
        for k, (name, n, w) in enumerate(
            zip(report.class_names, report.pixels, weights, strict=True)
        ):
            table.add_row(str(k), name, f"{n:,}", f"{100 * n / total:.2f}", f"{w:.4f}")
        ignored = f"{100 * report.ignored / total:.2f}"
        table.add_row(str(report.ignore_index), "(ignored)", f"{report.ignored:,}", ignored, "")
        console.print(table)
        # one unwrapped line, to paste as a Hydra override
        weights_list = ",".join(f"{w:.4f}" for w in weights)
        console.print(f"model.class_weights=[{weights_list}]", soft_wrap=True, highlight=False)
    problems = f"[red]{len(report.problems)} problem(s)" if report.problems else "no problems"
    console.print(f"{report.split}: {report.samples} samples, {problems}")
