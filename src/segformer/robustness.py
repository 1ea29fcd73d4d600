"""Robustness to image corruptions (paper Table 5: Cityscapes-C), evaluated on the fly.

    segformer-eval experiment=cityscapes ckpt_path=... corruption=all severity=all
    segformer-eval ckpt_path=... corruption=gaussian_noise severity=3
    segformer-eval ckpt_path=... corruption=[fog,frost] severity=[1,5]

Each evaluation image is corrupted as it is read: the uint8 RGB image, before any resize and
normalisation, goes through the reference ImageNet-C / Cityscapes-C code, the
``imagecorruptions`` package (``corrupt(image, severity, corruption_name)``), with numpy seeded
per image from ``seed + index``: the same corrupted images in every run, worker count and
process count. One evaluation runs on the clean images, then one per corruption x severity.
Written to the run directory: ``robustness.json`` (mIoU per corruption and severity, group
means, overall mean, clean) and ``robustness.png`` (heat map + group means); the table is also
printed.

The reference code needs ``imagecorruptions`` with scikit-image and numba. The 2020 release
``imagecorruptions`` 1.1.2 no longer runs on current scikit-image (removed ``multichannel``
argument) and setuptools (no ``pkg_resources``); its maintained fork ``imagecorruptions-imaug``
(the same module and API) does. Both declare ``opencv-python``, which would overwrite this
project's ``opencv-python-headless`` (the same ``cv2`` module), so install it without
dependencies: ``pip install ".[robustness]"`` (scikit-image, numba) plus
``pip install --no-deps imagecorruptions-imaug`` (the Makefile does both).
"""

from __future__ import annotations

import copy
import inspect
import json
from collections.abc import Callable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from segformer.checkpoint_io import atomic_files
from segformer.errors import InputError

# Paper Table 5 (after Kamann & Rother's Cityscapes-C), its column groups in its order
CORRUPTION_GROUPS: dict[str, tuple[str, ...]] = {
    "blur": ("motion_blur", "defocus_blur", "glass_blur", "gaussian_blur"),
    "noise": ("gaussian_noise", "impulse_noise", "shot_noise", "speckle_noise"),
    "digital": ("brightness", "contrast", "saturate", "jpeg_compression"),
    "weather": ("snow", "spatter", "fog", "frost"),
}
CORRUPTIONS: tuple[str, ...] = tuple(c for group in CORRUPTION_GROUPS.values() for c in group)
GROUP_OF = {c: group for group, names in CORRUPTION_GROUPS.items() for c in names}
SEVERITIES = (1, 2, 3, 4, 5)
MIN_SIZE = 32  # imagecorruptions refuses smaller images
INSTALL = 'pip install ".[robustness]" && pip install --no-deps imagecorruptions-imaug'


def parse_corruptions(value: Any) -> list[str]:
    """``all``, a name, or a list of names (``[fog,frost]`` / ``fog,frost``) -> names."""
    names = _as_list(value)
    if names == ["all"]:
        return list(CORRUPTIONS)
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise InputError(
            f"corruption={value!r}: unknown {unknown or 'empty'}; expected 'all' or names from "
            f"{list(CORRUPTIONS)}"
        )
    return list(dict.fromkeys(names))


def parse_severities(value: Any) -> list[int]:
    """``all``, an int 1-5, or a list of them -> severities."""
    items = _as_list(value)
    if items == ["all"]:
        return list(SEVERITIES)
    try:
        severities = [int(s) for s in items]
    except ValueError:
        severities = []
    if not severities or any(s not in SEVERITIES for s in severities):
        raise InputError(f"severity={value!r}; expected 'all', an integer 1-5 or a list of them")
    return sorted(set(severities))


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.strip("[]").split(",") if v.strip()]
    if isinstance(value, Sequence):
        return [str(v).strip() for v in value]
    return [str(value)]


def _corruption_function(name: str) -> Callable[..., Any]:
    try:
        import imagecorruptions
    except ImportError as err:
        raise ImportError(
            f"corruption={name}: the reference corruptions need the imagecorruptions package "
            f"({err}); install them with: {INSTALL}"
        ) from None
    return imagecorruptions.corruption_dict[name]


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> the same corrupted by ``imagecorruptions`` at ``severity``, with
    numpy's global RNG seeded by ``seed`` (and restored afterwards)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"expected a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < MIN_SIZE:
        raise InputError(
            f"corruption={corruption}: image of {image.shape[1]}x{image.shape[0]} pixels; "
            f"imagecorruptions needs at least {MIN_SIZE}x{MIN_SIZE}"
        )
    function = _corruption_function(corruption)
    import imagecorruptions

    # the reference code draws from numpy's global RNG; glass_blur (numba's own RNG) and
    # impulse_noise (scikit-image's) take a seed argument in the maintained fork
    kwargs = {"seed": seed} if "seed" in inspect.signature(function).parameters else {}
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        return imagecorruptions.corrupt(image, severity, corruption_name=corruption, **kwargs)
    finally:
        np.random.set_state(state)


class _CorruptFirst:
    """A dataset transform that corrupts the uint8 image, then runs the original transform."""

    def __init__(self, transform: Callable[..., Any], corruption: str, severity: int) -> None:
        self.transform, self.corruption, self.severity = transform, corruption, severity
        self.seed = 0  # set per sample by CorruptedDataset, right before the transform runs

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: Any) -> Any:
        image = corrupt_image(image, self.corruption, self.severity, self.seed)
        return self.transform(image, mask, rng)


class CorruptedDataset(Dataset):
    """``dataset`` (any whose ``transform(image, mask, rng)`` receives the uint8 RGB image, as
    every data module's does) with each image corrupted first, seeded by ``seed + index``."""

    def __init__(self, dataset: Dataset, corruption: str, severity: int, seed: int = 0) -> None:
        if not callable(getattr(dataset, "transform", None)):
            raise TypeError(
                f"{type(dataset).__name__} has no transform(image, mask, rng) to corrupt before"
            )
        self.dataset = copy.copy(dataset)  # shares the samples; gets its own transform
        self.transform = _CorruptFirst(dataset.transform, corruption, severity)
        self.dataset.transform = self.transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        index = key[0] if isinstance(key, tuple) else int(key)
        self.transform.seed = self.seed + index  # one sample at a time in each worker
        return self.dataset[key]


def corrupted_loader(loader: DataLoader, corruption: str, severity: int, seed: int) -> DataLoader:
    """``loader`` (an eval loader of a data module) over the corrupted images, same batching,
    sampler (shards), workers and collate."""
    return DataLoader(
        CorruptedDataset(loader.dataset, corruption, severity, seed),
        batch_size=loader.batch_size,
        sampler=loader.sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )


def summarize(clean: float, results: dict[str, dict[int, float]]) -> dict[str, Any]:
    """mIoU per corruption and severity -> the report: per-corruption means, group means (of
    the corruptions evaluated in each group), overall mean over every cell, clean."""
    corruptions = {
        name: {
            "group": GROUP_OF[name],
            "mIoU": {str(s): v for s, v in sorted(cells.items())},
            "mean": float(np.mean(list(cells.values()))),
        }
        for name, cells in results.items()
    }
    groups = {
        group: float(np.mean([c["mean"] for c in corruptions.values() if c["group"] == group]))
        for group in CORRUPTION_GROUPS
        if any(c["group"] == group for c in corruptions.values())
    }
    cells = [v for per in results.values() for v in per.values()]
    return {
        "clean": clean,
        "severities": sorted({s for per in results.values() for s in per}),
        "corruptions": corruptions,
        "groups": groups,
        "mean": float(np.mean(cells)),
    }


def report_table(report: dict[str, Any], title: str = "mIoU (%) under corruption") -> Any:
    """A rich table: corruptions (grouped) x severities, per-corruption mean, group means."""
    from rich.table import Table

    severities = report["severities"]
    table = Table(title=title)
    table.add_column("group")
    table.add_column("corruption")
    for s in severities:
        table.add_column(f"sev {s}", justify="right")
    table.add_column("mean", justify="right", style="bold")
    groups_done = set()
    for name, row in report["corruptions"].items():
        group = row["group"] if row["group"] not in groups_done else ""
        groups_done.add(row["group"])
        cells = [f"{100 * row['mIoU'][str(s)]:.2f}" for s in severities]
        table.add_row(group, name, *cells, f"{100 * row['mean']:.2f}")
    table.add_section()
    blank = [""] * len(severities)
    for group, mean in report["groups"].items():
        table.add_row(group, "(group mean)", *blank, f"{100 * mean:.2f}")
    table.add_row("all", "(mean)", *blank, f"{100 * report['mean']:.2f}", style="bold")
    table.add_row("clean", "", *blank, f"{100 * report['clean']:.2f}")
    return table


def report_png(report: dict[str, Any]) -> bytes:
    """Heat map corruption x severity (mIoU %) beside a bar chart of group means and clean."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, severities = list(report["corruptions"]), report["severities"]
    grid = np.array([[report["corruptions"][n]["mIoU"][str(s)] for s in severities] for n in names])
    fig, (ax, bars) = plt.subplots(
        1, 2, figsize=(10, 1.5 + 0.35 * len(names)), gridspec_kw={"width_ratios": [3, 2]}
    )
    image = ax.imshow(100 * grid, cmap="viridis", vmin=0, vmax=100, aspect="auto")
    ax.set_xticks(range(len(severities)), [str(s) for s in severities])
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("severity")
    for (i, j), v in np.ndenumerate(grid):
        color = "k" if v > 0.6 else "w"  # readable on viridis' light top end
        ax.text(j, i, f"{100 * v:.1f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, label="mIoU (%)")
    labels = ["clean", *report["groups"], "mean"]
    values = [report["clean"], *report["groups"].values(), report["mean"]]
    drawn = bars.bar(labels, [100 * v for v in values], color=["grey"] + ["C0"] * len(values[1:]))
    bars.bar_label(drawn, fmt="%.1f", fontsize=8)
    bars.set_title("clean, group means, mean", fontsize=10)
    bars.set_ylim(0, 100)
    bars.tick_params(axis="x", rotation=45)
    fig.suptitle("mIoU under image corruptions (imagecorruptions)")
    fig.tight_layout()
    picture = BytesIO()
    fig.savefig(picture, format="png", dpi=120)
    plt.close(fig)
    return picture.getvalue()


def _no_report(*args: Any, **kwargs: Any) -> None:
    """Stands in for the module's per-class report (a function, so the module still pickles)."""


def evaluate_robustness(
    cfg: Any, trainer: Any, module: Any, datamodule: Any, output_dir: Path
) -> dict[str, Any]:
    """segformer-eval with ``corruption=``: the clean evaluation, then one per corruption x
    severity of ``cfg.split``; writes robustness.json/.png, prints the table; returns the
    report (mIoU values in [0, 1])."""
    from rich.console import Console

    corruptions = parse_corruptions(cfg.corruption)
    severities = parse_severities(cfg.get("severity", "all"))
    _corruption_function(corruptions[0])  # fail before any evaluation when not installed
    seed = int(cfg.get("seed") or 0)
    split = cfg.split
    run = trainer.validate if split == "val" else trainer.test
    datamodule.trainer = trainer  # so the loader shards over the trainer's processes
    datamodule.setup("validate" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    # one per-class table per corruption x severity would flood the terminal: the summary
    # table below replaces them
    module._report = _no_report
    console = Console()

    def evaluate(dataloader: DataLoader, what: str) -> float:
        console.print(f"[bold]{what}")
        run(module, dataloaders=dataloader, verbose=False)
        # callback_metrics: under ddp_spawn other processes evaluate and only these come back
        return float(trainer.callback_metrics[f"{split}/mIoU"])

    clean = evaluate(loader, "clean")
    results: dict[str, dict[int, float]] = {}
    for name in corruptions:
        for severity in severities:
            dataloader = corrupted_loader(loader, name, severity, seed)
            miou = evaluate(dataloader, f"{name} severity {severity}")
            results.setdefault(name, {})[severity] = miou
    report = {
        "checkpoint": str(cfg.ckpt_path),
        "split": split,
        "seed": seed,
        **summarize(clean, results),
    }
    if trainer.is_global_zero:
        files = {
            output_dir / "robustness.json": json.dumps(report, indent=2),
            output_dir / "robustness.png": report_png(report),
        }
        atomic_files(files, "robustness report")
        console.print(report_table(report))
        console.print(f"wrote {output_dir / 'robustness.json'} and robustness.png")
    return report
