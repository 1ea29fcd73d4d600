"""Class weights from the training masks: `model.class_weights=auto` (and segformer-check-data).

The pixels of each class are counted over the masks of a split once, read as the dataset reads
them (label map, palette, reduce_zero_label, range checks, data.nodata), and kept in a JSON file
beside the data (``{root}/.segformer_class_counts.json``), or, when that folder is read-only,
under ``$XDG_CACHE_HOME/segformer/class_counts/`` (default ``~/.cache``). An entry's key is a
digest of the mask files (path, size, mtime) and of the label settings, so a changed, added or
removed mask, or another label map, counts again.

The weights come from the counts by one function, `weights_from_counts`, which
segformer-check-data uses too, so both print the same weights for the same split:

- ``median_frequency`` (``auto``; Eigen & Fergus 2015): f_c = pixels of c / pixels of the masks
  holding c, w_c = median(f) / f_c;
- ``sqrt_median_frequency`` (``auto_sqrt``): its square root, a milder re-weighting;
- ``enet`` (``auto_enet``; Paszke et al. 2016): w_c = 1 / ln(c + p_c), p_c = the share of the
  labelled pixels that are c, c = 1.02 unless given.

Classes with no pixels get 0 under every rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from segformer.errors import InputError

RULES = ("median_frequency", "sqrt_median_frequency", "enet")
# config shorthands: model.class_weights=auto | auto_sqrt | auto_enet
ALIASES = {"auto": "median_frequency", "auto_sqrt": "sqrt_median_frequency", "auto_enet": "enet"}
ENET_C = 1.02
CACHE_NAME = ".segformer_class_counts.json"
CACHE_VERSION = 1
CACHE_ENTRIES = 16  # entries kept per cache file (the newest)


@dataclass(frozen=True)
class WeightRule:
    """A rule turning class pixel counts into loss weights; ``c`` is ENet's constant."""

    name: str
    c: float = ENET_C

    def __str__(self) -> str:
        return self.name if self.name != "enet" or self.c == ENET_C else f"enet c={self.c:g}"


def parse_rule(value: Any) -> WeightRule | None:
    """The rule a ``class_weights`` setting asks for: a rule name or its ``auto*`` shorthand, or
    ``{rule: ..., c: ...}``; None for a list of weights or null (nothing to count)."""
    if value is None or (isinstance(value, Sequence) and not isinstance(value, str)):
        return None
    options: dict[str, Any] = {}
    if isinstance(value, Mapping):
        options = dict(value)
        name = options.pop("rule", "auto")
    else:
        name = value
    choices = f"a list of weights, null, {', '.join([*ALIASES, *RULES])} or {{rule: enet, c: 1.02}}"
    if not isinstance(name, str) or ALIASES.get(name, name) not in RULES:
        raise InputError(f"model.class_weights: unknown rule {name!r}; give {choices}")
    rule = ALIASES.get(name, name)
    c = options.pop("c", ENET_C)
    if options:
        unknown = sorted(options)
        raise InputError(f"model.class_weights: unknown option(s) {unknown}; give {choices}")
    if c != ENET_C and rule != "enet":
        raise InputError(f"model.class_weights: c={c} is an option of the enet rule, not {rule}")
    if not isinstance(c, int | float) or isinstance(c, bool) or not c > 1:
        raise InputError(f"model.class_weights: enet c must be a number > 1, got {c!r}")
    return WeightRule(rule, float(c))


def weights_from_counts(
    pixels: np.ndarray, image_pixels: np.ndarray, rule: WeightRule | str = "median_frequency"
) -> np.ndarray:
    """float64 (K,) weights of `rule` from the labelled pixels per class and the pixels of the
    masks holding each class (see the module doc). Absent classes get 0."""
    rule = rule if isinstance(rule, WeightRule) else WeightRule(ALIASES.get(rule, rule))
    pixels = np.asarray(pixels, np.float64)
    present = pixels > 0
    weights = np.zeros(len(pixels))
    if not present.any():
        return weights
    if rule.name == "enet":
        share = pixels[present] / pixels.sum()
        weights[present] = 1.0 / np.log(rule.c + share)
        return weights
    freq = pixels[present] / np.asarray(image_pixels, np.float64)[present]
    weights[present] = np.median(freq) / freq
    if rule.name == "sqrt_median_frequency":
        weights = np.sqrt(weights)
    elif rule.name != "median_frequency":
        raise InputError(f"unknown class weight rule {rule.name!r}; one of {', '.join(RULES)}")
    return weights


@dataclass
class ClassCounts:
    """Pixels per class over the masks of a split, and where they were kept."""

    split: str
    class_names: list[str]
    masks: int
    pixels: np.ndarray  # int64 (K,) labelled pixels per class
    image_pixels: np.ndarray  # int64 (K,) pixels of the masks holding each class
    ignored: int
    cache: Path | None = None  # the file holding them (None: not kept)
    counted: bool = True  # False: read from the cache

    def weights(self, rule: WeightRule | str) -> np.ndarray:
        return weights_from_counts(self.pixels, self.image_pixels, rule)

    def add(self, counts: np.ndarray, ignore_index: int) -> None:
        """One mask's int64 (256,) pixels per train id (the same sums as check-data's)."""
        k = len(self.class_names)
        self.masks += 1
        self.pixels += counts[:k]
        self.image_pixels[counts[:k] > 0] += counts.sum()
        self.ignored += int(counts[ignore_index])

    def to_dict(self) -> dict[str, Any]:
        return {
            "split": self.split,
            "classes": self.class_names,
            "masks": self.masks,
            "pixels": [int(n) for n in self.pixels],
            "image_pixels": [int(n) for n in self.image_pixels],
            "ignored": int(self.ignored),
        }

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any], cache: Path | None) -> ClassCounts:
        return cls(
            entry["split"],
            list(entry["classes"]),
            int(entry["masks"]),
            np.asarray(entry["pixels"], np.int64),
            np.asarray(entry["image_pixels"], np.int64),
            int(entry["ignored"]),
            cache,
            counted=False,
        )


def weights_line(counts: ClassCounts, rule: WeightRule, weights: Sequence[float]) -> str:
    """``class weights (<rule>, from <n> masks of <split>, cached <path>): name=w, ...``."""
    where = f", cached {counts.cache}" if counts.cache is not None else ", not cached"
    if counts.counted and counts.cache is not None:
        where = f", counted, cached {counts.cache}"
    named = ", ".join(f"{n}={w:.4f}" for n, w in zip(counts.class_names, weights, strict=True))
    return f"class weights ({rule}, from {counts.masks} masks of {counts.split}{where}): {named}"


# --- counting


def _files_dataset(datamodule: Any, split: str) -> Any:
    from segformer.data.dataset import SegmentationDataset

    dataset = datamodule.make_dataset(split, train=False)
    if not isinstance(dataset, SegmentationDataset):
        raise InputError(
            f"model.class_weights=auto counts the masks of files on disk; {datamodule.name} "
            "generates its samples in memory: give a list of weights (or null)"
        )
    return dataset


def _stat(path: Path, root: Path | None) -> list[Any]:
    st = path.stat()
    inside = root is not None and path.is_relative_to(root)
    return [str(path.relative_to(root)) if inside else str(path), st.st_size, st.st_mtime_ns]


def counts_key(datamodule: Any, split: str, dataset: Any | None = None) -> str:
    """Digest of what the counts of `split` depend on: the mask files (path below root, size,
    mtime), the label settings, and the images too when data.nodata masks their pixels."""
    dataset = dataset if dataset is not None else _files_dataset(datamodule, split)
    root = datamodule.root.resolve() if datamodule.root is not None else None
    nodata = dataset.image_format.nodata is not None
    files = [
        [_stat(Path(mask).resolve(), root)] + ([_stat(Path(img).resolve(), root)] if nodata else [])
        for img, mask in dataset.samples
    ]

    def array(a: np.ndarray | None) -> str | None:
        return None if a is None else hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()

    settings = {
        "version": CACHE_VERSION,
        "classes": list(datamodule.class_names),
        "ignore_index": dataset.ignore_index,
        "label_map": array(dataset.label_map),
        "allowed": array(dataset.allowed_values),
        "palette": array(dataset.palette),
        "nodata": dataset.image_format.to_dict() if nodata else None,
    }
    text = json.dumps([settings, files], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def count_split(
    datamodule: Any, split: str, dataset: Any | None = None, threads: int | None = None
) -> ClassCounts:
    """Count the class pixels of every mask of `split` (one pass, a progress line). A bad mask
    raises, naming the file (segformer-check-data lists them all)."""
    dataset = dataset if dataset is not None else _files_dataset(datamodule, split)
    nodata = dataset.image_format.nodata is not None
    k = len(datamodule.class_names)
    counts = ClassCounts(
        split, list(datamodule.class_names), 0, np.zeros(k, np.int64), np.zeros(k, np.int64), 0
    )

    def one(index: int) -> np.ndarray:
        image_path, mask_path = dataset.samples[index]
        mask = dataset.read_mask(mask_path)
        if nodata:  # ignored in training: not counted (as check-data)
            _, missing = dataset.read_image_nodata(image_path)
            if missing is not None and missing.shape == mask.shape:
                mask = dataset.mask_nodata(mask, missing)
        return np.bincount(mask.ravel(), minlength=256)

    workers = threads or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # PNG decoding releases the GIL
        done = pool.map(one, range(len(dataset)))
        label = f"counting class pixels of {split} ({len(dataset)} masks)"
        for mask_counts in track(done, label, total=len(dataset), transient=True):
            counts.add(mask_counts, dataset.ignore_index)
    return counts


# --- the cache


def _cache_home() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "segformer" / "class_counts"


def cache_files(root: Path | None) -> list[Path]:
    """Where counts of data under `root` are kept, in the order tried: beside the data, then the
    user's cache folder (a file per data folder)."""
    if root is None:
        return [_cache_home() / "no_root.json"]
    root = root.resolve()
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:16]
    return [root / CACHE_NAME, _cache_home() / f"{root.name}-{digest}.json"]


def _writable(folder: Path) -> bool:
    """Whether to write into `folder`: a folder without write permission counts as read-only
    even for root (who may write anyway), so shared read-only data stays untouched."""
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        return False
    return not (getattr(os, "geteuid", lambda: -1)() == 0 and not folder.stat().st_mode & 0o222)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    ok = isinstance(data, dict) and data.get("version") == CACHE_VERSION
    return data.get("entries", {}) if ok and isinstance(data.get("entries"), dict) else {}


def load_counts(root: Path | None, key: str) -> ClassCounts | None:
    for path in cache_files(root):
        entry = _read_cache(path).get(key) if path.is_file() else None
        if entry is not None:
            try:
                return ClassCounts.from_dict(entry, path)
            except (KeyError, TypeError, ValueError):
                continue  # a damaged entry: count again
    return None


def store_counts(root: Path | None, key: str, counts: ClassCounts) -> Path | None:
    """Keep `counts` under `key` in the first writable cache file; the file written, or None
    when none could be (the run goes on, counting again next time)."""
    from segformer.checkpoint_io import atomic_write

    for path in cache_files(root):
        folder = path.parent
        if folder != _cache_home() and not _writable(folder):
            continue
        entries = _read_cache(path) if path.is_file() else {}
        entries.pop(key, None)
        entries[key] = {**counts.to_dict(), "time": time.time()}
        newest = sorted(entries.items(), key=lambda e: e[1].get("time", 0))[-CACHE_ENTRIES:]
        text = json.dumps({"version": CACHE_VERSION, "entries": dict(newest)}, indent=1)
        try:
            atomic_write(path, text, "class pixel counts")
        except OSError:
            continue
        return path
    return None


def split_label(datamodule: Any, split: str) -> str:
    """`split` as the weights line names it (the training side of a grouped split said so)."""
    if getattr(datamodule, "val_groups", None) is not None and split == datamodule.train_split:
        return f"{split} without data.val_groups"
    return split


def split_counts(datamodule: Any, split: str | None = None, cache: bool = True) -> ClassCounts:
    """The class pixel counts of `split` (default: the training split, its training side
    under data.val_groups): from the cache when the files and label settings are unchanged,
    else counted once and cached."""
    split = split or datamodule.train_split
    dataset = _files_dataset(datamodule, split)
    shown = split_label(datamodule, split)
    key = counts_key(datamodule, split, dataset) if cache else ""
    if cache:
        found = load_counts(datamodule.root, key)
        if found is not None:
            found.split = shown
            return found
    counts = count_split(datamodule, split, dataset)
    counts.split = shown
    if cache:
        counts.cache = store_counts(datamodule.root, key, counts)
    return counts


def auto_class_weights(
    value: Any, datamodule: Any, split: str | None = None
) -> tuple[list[float], str] | None:
    """Resolve a `model.class_weights` rule (``auto`` ...) on `datamodule`'s training masks:
    (weights, the line to print); None when `value` is a list or null."""
    rule = parse_rule(value)
    if rule is None:
        return None
    counts = split_counts(datamodule, split)
    weights = [float(w) for w in counts.weights(rule)]
    return weights, weights_line(counts, rule, weights)
