"""Scan a dataset split for bad files and summarise it: image sizes, per-band image statistics
(the data.mean / data.std to paste), class pixels, class weights, label warnings (classes with no
pixels, files mostly ignored, 0/255 masks, one-class splits: see data/label_checks.py).

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

from segformer.data.class_weights import (
    RULES,
    ClassCounts,
    WeightRule,
    split_label,
    weights_from_counts,
    weights_line,
)
from segformer.data.datamodule import SegmentationDataModule
from segformer.data.dataset import SegmentationDataset
from segformer.data.label_checks import LabelScan, single_class_problem, zero_255_problem
from segformer.errors import InputError

T = TypeVar("T")

# what a bad file raises (see reading.py and dataset.py); anything else is a bug and propagates
DATA_ERRORS = (OSError, ValueError)
# files whose ignored share of pixels is at least this are listed
LARGE_IGNORED_SHARE = 0.5


@dataclass
class SampleReport:
    """One (image, mask) pair: its problems as (file, message), the image size, class pixels."""

    problems: list[tuple[Path, str]] = field(default_factory=list)
    size: tuple[int, int] | None = None  # (W, H); None when the image is unreadable
    counts: np.ndarray | None = None  # int64 (256,) pixels per train id; None when mask is bad
    raw_counts: np.ndarray | None = None  # int64 (256,) pixels per stored mask value
    band_sum: np.ndarray | None = None  # float64 (C,) sum of each image band
    band_sumsq: np.ndarray | None = None  # float64 (C,) sum of squares of each band
    band_min: np.ndarray | None = None
    band_max: np.ndarray | None = None
    nodata_pixels: int = 0  # no-data pixels of the image (data.nodata: NaN/inf or the value)


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
    read = _attempt(report.problems, image_path, lambda: dataset.read_image_nodata(image_path))
    image, nodata = read if read is not None else (None, None)
    raw = _attempt(report.problems, mask_path, lambda: dataset.read_raw_mask(mask_path))
    mask = None
    if raw is not None:
        report.raw_counts = np.bincount(raw.ravel(), minlength=256)
        mask = _attempt(report.problems, mask_path, lambda: dataset.map_labels(raw, mask_path))
    if image is not None:
        report.size = (image.shape[1], image.shape[0])
        bands = image.reshape(-1, image.shape[2]).astype(np.float64)
        if nodata is not None:  # the statistics of the data, not of the no-data fill
            report.nodata_pixels = int(nodata.sum())
            bands = bands[~nodata.ravel()]
        report.band_sum, report.band_sumsq = bands.sum(0), (bands * bands).sum(0)
        if len(bands):
            report.band_min, report.band_max = bands.min(0), bands.max(0)
        else:
            report.band_sum = None  # all no-data: nothing to average
    if mask is not None:
        if nodata is not None and mask.shape == nodata.shape:
            mask = dataset.mask_nodata(mask, nodata)  # ignored in training, counted so here
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
    masks: int = 0  # readable masks, the ones counted
    counts_label: str | None = None  # the split as the class weights line names it
    mapped: bool = False  # the dataset maps stored values (label map, palette)
    labels: LabelScan = field(init=False)  # stored values seen, for the label warnings
    ignored_files: list[tuple[Path, float]] = field(default_factory=list)  # share >= LARGE_...
    band_pixels: int = 0
    band_sum: np.ndarray | None = None
    band_sumsq: np.ndarray | None = None
    band_min: np.ndarray | None = None
    band_max: np.ndarray | None = None
    nodata_pixels: int = 0
    nodata_files: list[tuple[Path, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.pixels = np.zeros(len(self.class_names), np.int64)
        self.image_pixels = np.zeros(len(self.class_names), np.int64)
        self.labels = LabelScan(len(self.class_names))

    def band_stats(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) per image band over every pixel of the readable images."""
        if self.band_sum is None or self.band_sumsq is None or not self.band_pixels:
            return None
        mean = self.band_sum / self.band_pixels
        var = np.maximum(self.band_sumsq / self.band_pixels - mean * mean, 0.0)
        return mean, np.sqrt(var)

    def _add_bands(self, sample: SampleReport) -> None:
        assert sample.band_sum is not None and sample.size is not None
        if self.band_sum is not None and len(self.band_sum) != len(sample.band_sum):
            return  # a file with another band count is a problem of its own, not averaged in
        if self.band_sum is None:
            self.band_sum, self.band_sumsq = sample.band_sum.copy(), sample.band_sumsq.copy()
            self.band_min, self.band_max = sample.band_min.copy(), sample.band_max.copy()
        else:
            self.band_sum += sample.band_sum
            self.band_sumsq += sample.band_sumsq
            self.band_min = np.minimum(self.band_min, sample.band_min)
            self.band_max = np.maximum(self.band_max, sample.band_max)
        self.band_pixels += sample.size[0] * sample.size[1] - sample.nodata_pixels

    @property
    def bad_files(self) -> set[Path]:
        return {file for file, _ in self.problems}

    def add(
        self, sample: SampleReport, mask_path: Path | None = None, image_path: Path | None = None
    ) -> None:
        self.samples += 1
        self.problems += sample.problems
        if sample.size is not None:
            self.sizes[sample.size] += 1
        if sample.band_sum is not None:
            self._add_bands(sample)
        if sample.nodata_pixels and image_path is not None:
            self.nodata_pixels += sample.nodata_pixels
            self.nodata_files.append((image_path, sample.nodata_pixels))
        if sample.counts is not None:
            counts = sample.counts[: len(self.class_names)]
            self.masks += 1
            self.pixels += counts
            self.image_pixels[counts > 0] += sample.counts.sum()
            ignored = int(sample.counts[self.ignore_index])
            self.ignored += ignored
            share = ignored / max(int(sample.counts.sum()), 1)
            if mask_path is not None and share >= LARGE_IGNORED_SHARE:
                self.ignored_files.append((mask_path, share))
            if sample.raw_counts is not None and mask_path is not None:
                self.labels.add(sample.raw_counts, sample.counts, self.ignore_index, mask_path)

    def label_warnings(self) -> list[str]:
        """Classes without pixels, 0/255 masks and one-class splits (data/label_checks.py)."""
        warnings = []
        if self.labels.files:
            absent = [n for n, p in zip(self.class_names, self.pixels, strict=True) if p == 0]
            if absent:
                warnings.append(f"class(es) with no pixels in {self.split}: {', '.join(absent)}")
            for problem in (
                None if self.mapped else zero_255_problem(self.labels, self.ignore_index),
                single_class_problem(self.labels, self.class_names),
            ):
                if problem:
                    warnings.append(problem)
        return warnings

    def class_counts(self) -> ClassCounts:
        """The class pixels found, as `model.class_weights=auto` counts them
        (data/class_weights.py)."""
        return ClassCounts(
            self.counts_label or self.split,
            self.class_names,
            self.masks,
            self.pixels,
            self.image_pixels,
            self.ignored,
            counted=False,
        )


def check_split(
    datamodule: SegmentationDataModule, split: str, num_workers: int | None = None
) -> SplitReport:
    """Scan every sample of `split` with `num_workers` threads (None: one per CPU; decoding
    releases the GIL). Missing root, empty split and unpaired files are one problem each."""
    report = SplitReport(split, datamodule.root, datamodule.class_names, datamodule.ignore_index)
    try:
        dataset = datamodule.make_dataset(split, train=False)
        if not isinstance(dataset, SegmentationDataset):
            raise InputError(
                f"{datamodule.name} has no files to check: its samples are generated in memory"
            )
        report.mapped = datamodule.maps_labels(split)
        report.counts_label = split_label(datamodule, split)
    except DATA_ERRORS as err:
        report.problems.append((datamodule.root or Path(datamodule.name), str(err)))
        return report
    with ThreadPoolExecutor(num_workers or os.cpu_count()) as pool:
        samples = pool.map(lambda i: check_sample(dataset, i), range(len(dataset)))
        tracked = track(samples, f"checking {split}", total=len(dataset), transient=True)
        for i, sample in enumerate(tracked):
            report.add(sample, dataset.samples[i][1], dataset.samples[i][0])
    return report


def median_frequency_weights(pixels: np.ndarray, image_pixels: np.ndarray) -> np.ndarray:
    """Median-frequency class weights (Eigen & Fergus 2015): freq_c = pixels of class c / pixels
    of the images in which c appears, w_c = median(freq) / freq_c. Absent classes get 0.
    The function `model.class_weights=auto` uses (data/class_weights.py)."""
    return weights_from_counts(pixels, image_pixels, "median_frequency")


def _relative(file: Path, root: Path | None) -> str:
    inside = root is not None and file != root and file.is_relative_to(root)
    return str(file.relative_to(root)) if inside else str(file)


def print_report(report: SplitReport, console: Console, rule: WeightRule | None = None) -> None:
    """Problems, image sizes, class histogram and weights of one split as rich tables; the
    weights of every rule, and the line to paste of `rule` (default median frequency)."""
    rule = rule or WeightRule("median_frequency")
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
        counts = report.class_counts()
        rules = [WeightRule(r, rule.c if r == rule.name else WeightRule(r).c) for r in RULES]
        columns = [counts.weights(r) for r in rules]
        heads = {"median_frequency": "median-freq weight", "sqrt_median_frequency": "sqrt"}
        table = Table(title=f"{report.split}: class pixels", title_justify="left")
        for name in ("id", "class", "pixels", "%", *(heads.get(r.name, str(r)) for r in rules)):
            table.add_column(name, justify="left" if name == "class" else "right")
        for k, (name, n) in enumerate(zip(report.class_names, report.pixels, strict=True)):
            weights = (f"{w[k]:.4f}" for w in columns)
            table.add_row(str(k), name, f"{n:,}", f"{100 * n / total:.2f}", *weights)
        ignored = f"{100 * report.ignored / total:.2f}"
        blank = [""] * len(rules)
        table.add_row(str(report.ignore_index), "(ignored)", f"{report.ignored:,}", ignored, *blank)
        console.print(table)
        # the rule's weights as segformer-train prints them, and one unwrapped line to paste
        weights = counts.weights(rule)
        line = weights_line(counts, rule, weights).replace(", not cached", "")
        console.print(Text(line), soft_wrap=True)
        weights_list = ",".join(f"{w:.4f}" for w in weights)
        console.print(f"model.class_weights=[{weights_list}]", soft_wrap=True, highlight=False)
    _print_bands(report, console)
    _print_nodata(report, console)
    _print_label_warnings(report, console)
    problems = f"[red]{len(report.problems)} problem(s)" if report.problems else "no problems"
    console.print(f"{report.split}: {report.samples} samples, {problems}")


def _print_bands(report: SplitReport, console: Console) -> None:
    """Per-band mean / std / range in stored units, and the overrides to paste."""
    stats = report.band_stats()
    if stats is None:
        return
    mean, std = stats
    assert report.band_min is not None and report.band_max is not None
    table = Table(title=f"{report.split}: image bands (stored values)", title_justify="left")
    for name in ("band", "mean", "std", "min", "max"):
        table.add_column(name, justify="right")
    for b, values in enumerate(zip(mean, std, report.band_min, report.band_max, strict=True)):
        table.add_row(str(b), *(f"{v:.3f}" if i < 2 else f"{v:g}" for i, v in enumerate(values)))
    console.print(table)
    means, stds = ",".join(f"{m:.3f}" for m in mean), ",".join(f"{s:.3f}" for s in std)
    console.print(f"data.mean=[{means}] data.std=[{stds}]", soft_wrap=True, highlight=False)


def _print_nodata(report: SplitReport, console: Console, limit: int = 5) -> None:
    """The no-data pixels (data.nodata) found: how many, in which files; ignored in training."""
    if not report.nodata_files:
        return
    ranked = sorted(report.nodata_files, key=lambda f: -f[1])
    files = ", ".join(f"{_relative(f, report.root)} ({n:,})" for f, n in ranked[:limit])
    more = f", ... {len(ranked) - limit} more" if len(ranked) > limit else ""
    console.print(
        Text(
            f"{report.split}: {report.nodata_pixels:,} no-data pixel(s) (NaN/inf or data.nodata) "
            f"in {len(ranked)} image(s), ignored in the loss and 0 in the input: {files}{more}",
            style="yellow",
        )
    )


def _print_label_warnings(report: SplitReport, console: Console, limit: int = 20) -> None:
    for warning in report.label_warnings():
        console.print(Text(f"{report.split}: warning: {warning}", style="yellow"))
    if report.ignored_files:
        table = Table(
            title=f"{report.split}: files at least {100 * LARGE_IGNORED_SHARE:.0f}% ignored",
            title_justify="left",
        )
        table.add_column("mask", overflow="fold")
        table.add_column("ignored %", justify="right")
        ranked = sorted(report.ignored_files, key=lambda f: -f[1])
        for file, share in ranked[:limit]:
            table.add_row(Text(_relative(file, report.root)), f"{100 * share:.1f}")
        if len(ranked) > limit:
            table.add_row(f"... {len(ranked) - limit} more", "")
        console.print(table)
