"""segformer-predict: segment an image or a folder of images with a checkpoint.

    segformer-predict ckpt_path=logs/train/synthetic_b0/<run>/checkpoints/last.ckpt \
        input=photos/ output=predictions/
    segformer-predict pretrained=segformer-b0-finetuned-ade-512-512/ data=ade20k \
        input=photo.jpg output=out/ inference.mode=slide inference.crop=512 inference.stride=341

Per image, at its original resolution: <stem>.png (class ids, 8-bit grey), <stem>_color.png
(the same ids as a palette PNG: viewers show colours, the pixel values stay class ids) and
<stem>_overlay.jpg; classes.json lists id, name and colour. Class names and palette come from
``data=`` if given; without it the names come from the checkpoint (Lightning hyper-parameters,
transformers id2label) or are numbers, and the colours are the PASCAL VOC colour map
(``data.labels.default_palette``, as in training's prediction grids). A binary checkpoint
(``model.num_classes=1``) gives ids 0 / 1, foreground where the sigmoid exceeds its threshold
(``threshold=`` to change it); ``foreground_value=255`` writes 0 / 255 in <stem>.png, and
``probabilities=true`` adds <stem>_prob.png, the foreground probability x 255.

Rasters too large for memory and georeferenced TIFFs (``tiled.enabled=auto``; with the geo
extra, rasterio) are read, segmented and written window by window instead
(``segformer.raster``): <stem>.tif, class ids as a tiled deflate GeoTIFF with the input's CRS and
transform and the palette as colour map (optionally <stem>_probs.tif), in memory that does not
grow with the raster; an interrupted run continues where it stopped (``tiled.resume``).

An unreadable image (corrupt, truncated, empty, not an image) is skipped: every other prediction
is written, the skipped files are listed at the end and the command exits 1 (``strict=false``:
a warning and exit 0). Images of any size run, a 1x1 thumbnail too (``models.network.pad_small``).

Every output but the tiled GeoTIFFs (updated in place, to resume) is written beside its target
and renamed over it, an image's files together (``checkpoint_io.atomic_files``): a write that
fails (read-only folder, disk full, quota, file-size limit) leaves no partial file and stops the
command with one line naming the file, the cause and how many predictions were written before.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import ExifTags, Image
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from segformer.checkpoint_io import atomic_files, atomic_write, image_bytes, write_failed
from segformer.cli import hydra_cli, print_config
from segformer.data.channels import TIFF_SUFFIXES, ImageFormat
from segformer.data.files import IMAGE_SUFFIXES
from segformer.data.labels import default_palette
from segformer.data.reading import image_header
from segformer.errors import (
    InputError,
    MissingFileError,
    UnreadableFileError,
    UnwritableFileError,
)
from segformer.inference import InferenceConfig, segment, segment_binary
from segformer.models import SegFormer
from segformer.models.convert import checkpoint_class_names, checkpoint_input_format
from segformer.models.network import check_threshold
from segformer.precision import resolve_precision, select_device
from segformer.resolvers import register_resolvers
from segformer.visualize import colorize, display_rgb, overlay

register_resolvers()


def find_images(path: Path, recursive: bool = False, exclude: Path | None = None) -> list[Path]:
    """``path`` itself if a file, else the images in the folder (sorted); none from a subfolder
    ``exclude`` (the output folder: earlier predictions are not inputs)."""
    if not path.exists():
        raise MissingFileError(f"input {path}: no such file or directory")
    if path.is_file():
        return [path]
    candidates = path.rglob("*") if recursive else path.iterdir()
    skip = (
        exclude.resolve() if exclude is not None and exclude.resolve() != path.resolve() else None
    )
    images = sorted(
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not (skip is not None and p.resolve().is_relative_to(skip))
    )
    if not images:
        where = "in or below" if recursive else "directly in"
        raise MissingFileError(
            f"input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) {where} this folder"
            + ("" if recursive else "; recursive=true searches subfolders")
        )
    return images


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the header, EXIF rotation applied (as cv2.imread does); only groups batches."""
    if path.suffix.lower() in TIFF_SUFFIXES:  # tifffile: PIL opens few multi-band TIFFs
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                return series.shape[series.axes.index("Y")], series.shape[series.axes.index("X")]
        except (tifffile.TiffFileError, ValueError, IndexError) as err:
            raise UnreadableFileError(f"cannot read image {path}: {err}") from None
    try:
        with image_header(path) as im:
            w, h = im.size
            rotated = im.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    except OSError as err:  # PIL.UnidentifiedImageError included
        raise UnreadableFileError(f"cannot read image {path}: {err}") from None
    return (w, h) if rotated else (h, w)


def size_batches(sizes: dict[Path, tuple[int, int]], batch_size: int) -> list[list[Path]]:
    """Paths grouped by image size, in chunks of at most ``batch_size``."""
    groups: dict[tuple[int, int], list[Path]] = {}
    for path, size in sizes.items():
        groups.setdefault(size, []).append(path)
    return [
        paths[i : i + batch_size]
        for paths in groups.values()
        for i in range(0, len(paths), batch_size)
    ]


def class_metadata(cfg: DictConfig, path: Path, num_classes: int) -> tuple[list[str], np.ndarray]:
    """(class names, palette (K, 3) uint8): from ``data=``, else the checkpoint, else defaults."""
    if cfg.get("data") is not None:
        datamodule = instantiate(cfg.data)  # metadata only: nothing is read from disk
        if datamodule.num_classes != num_classes:
            raise InputError(
                f"{path}: the checkpoint predicts {num_classes} classes but data "
                f"'{type(datamodule).__name__}' has {datamodule.num_classes}"
            )
        return list(datamodule.class_names), np.asarray(datamodule.palette, np.uint8)
    names = checkpoint_class_names(path)
    if names is None or len(names) != num_classes:
        names = [str(i) for i in range(num_classes)]
    return names, default_palette(num_classes)


def binary_options(cfg: DictConfig, path: Path, model: torch.nn.Module) -> tuple[int, bool]:
    """(foreground_value, probabilities) for a binary checkpoint (one output), whose threshold
    ``threshold`` replaces when given; other checkpoints refuse these settings."""
    threshold = cfg.get("threshold")
    value, probabilities = cfg.get("foreground_value", 1), bool(cfg.get("probabilities", False))
    if model.num_classes != 1:
        settings = {
            "threshold": threshold is not None,
            "foreground_value": value != 1,
            "probabilities": probabilities,
        }
        given = [key for key, set_ in settings.items() if set_]
        if given:
            raise InputError(
                f"{path}: {', '.join(given)} apply to binary checkpoints (trained with "
                f"model.num_classes=1); this one predicts {model.num_classes} classes"
            )
        return 1, False
    if threshold is not None:
        model.threshold = check_threshold(threshold)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 255:
        raise InputError(
            f"foreground_value={value!r}: the value of foreground pixels in <stem>.png, 1-255"
        )
    return value, probabilities


def input_format(cfg: DictConfig, path: Path, in_channels: int) -> ImageFormat:
    """How to read and normalise the inputs: ``data=``'s settings if given, else those stored
    in the checkpoint at training, else 8-bit RGB with ImageNet statistics (for other band
    counts their ImageNet-cycled version, with a note: say it with ``data=...``)."""
    if cfg.get("data") is not None:
        fmt = instantiate(cfg.data).image_format  # nothing is read from disk
    elif (stored := checkpoint_input_format(path)) is not None:
        fmt = ImageFormat.from_dict(stored)
    else:
        fmt = ImageFormat(in_channels=in_channels)
        if in_channels != 3:
            print(
                f"{path}: no input format stored; reading {in_channels}-band images as 8-bit "
                "with ImageNet statistics (give data=... data.mean=... data.std=... otherwise)"
            )
    if fmt.in_channels != in_channels:
        raise InputError(
            f"{path}: the checkpoint takes {in_channels} input channels but the data format "
            f"reads {fmt.in_channels} (data.in_channels)"
        )
    return fmt


def write_prediction(
    target: Path,
    image: np.ndarray,
    pred: np.ndarray,
    palette: np.ndarray,
    alpha: float = 0.5,
    overlay_format: str = "jpg",
    foreground_value: int = 1,
    probability: np.ndarray | None = None,
) -> None:
    """``target``.png (ids), ``target``_color.png (palette PNG) and ``target``_overlay.<fmt>;
    ``image`` is shown through ``display_rgb`` (first three bands, 16-bit stretched). The three
    are written all or nothing (``checkpoint_io.atomic_files``): a failed write leaves no partial
    file and the previous ones as they were. A binary model's ``target``.png holds 0 and
    ``foreground_value``; with its ``probability`` (H, W) in [0, 1] also ``target``_prob.png,
    round(255 p) in 8-bit grey."""
    ids_path, color_path, overlay_path = output_files(target, overlay_format)
    ids = Image.fromarray(pred.astype(np.uint8))  # mode L
    color = ids.copy()
    color.putpalette(palette.reshape(-1).tolist())  # L -> P, the same bytes
    view = display_rgb(image)
    shown = Image.fromarray(overlay(view, colorize(pred, palette), alpha))
    images = {ids_path: ids, color_path: color, overlay_path: shown}
    if foreground_value != 1:  # binary: 0 / foreground_value, e.g. 255 (black and white)
        images[ids_path] = Image.fromarray((pred * foreground_value).astype(np.uint8))
    if probability is not None:
        prob_path = target.with_name(f"{target.name}_prob.png")
        images[prob_path] = Image.fromarray(np.round(probability * 255).astype(np.uint8))
    atomic_files({path: image_bytes(im, path) for path, im in images.items()}, "prediction")


def output_files(target: Path, overlay_format: str = "jpg") -> list[Path]:
    """The class-id PNG, the palette PNG and the overlay written for output path ``target``."""
    names = (
        f"{target.name}.png",
        f"{target.name}_color.png",
        f"{target.name}_overlay.{overlay_format}",
    )
    return [target.with_name(name) for name in names]


def output_targets(
    images: list[Path], root: Path, output: Path, overlay_format: str = "jpg"
) -> dict[Path, Path]:
    """image -> ``output``/<folder relative to root>/<stem>; refuses two images with one stem in
    a folder and outputs that would overwrite an input."""
    targets: dict[Path, Path] = {}
    owners: dict[Path, Path] = {}
    inputs = {p.resolve() for p in images}
    for path in images:
        rel = path.relative_to(root) if root.is_dir() else Path(path.name)
        target = output / rel.parent / rel.stem
        if target in owners:
            raise InputError(
                f"{owners[target]} and {path} would both write {target}.png; rename one"
            )
        for written in output_files(target, overlay_format):
            if written.resolve() in inputs:
                raise InputError(f"output {written} would overwrite an input image; change output")
        owners[target], targets[path] = path, target
    return targets


def predict(cfg: DictConfig) -> Path:
    """Segment every image of ``cfg.input`` into ``cfg.output``; returns the output folder."""
    if cfg.get("ckpt_path") is None:
        raise InputError("set ckpt_path=PATH (alias pretrained=PATH): weights in any format")
    if cfg.overlay_format not in ("jpg", "png"):
        raise InputError(f"overlay_format={cfg.overlay_format!r}; expected 'jpg' or 'png'")
    if cfg.batch_size < 1:
        raise InputError(f"batch_size={cfg.batch_size}; expected >= 1")
    print_config(cfg, save_to=Path(cfg.paths.output_dir), show=cfg.get("print_config", False))
    source, output = Path(cfg.input).expanduser(), Path(cfg.output).expanduser()
    images = find_images(source, cfg.recursive, exclude=output)
    targets = output_targets(images, source, output, cfg.overlay_format)
    sizes, skipped = read_sizes(images)  # unreadable files are skipped, listed at the end
    # large or georeferenced rasters: read, segmented and written window by window (GeoTIFF)
    tiled = tiled_inputs(cfg, sizes, targets)
    sizes = {path: size for path, size in sizes.items() if path not in tiled}

    ckpt_path = Path(cfg.ckpt_path).expanduser()
    device = select_device(cfg.device)
    model = SegFormer.from_pretrained(ckpt_path).to(device)
    precision, reason = resolve_precision(cfg.precision, device.type)
    bf16 = precision.startswith("bf16")
    if model.num_classes > 256:
        raise InputError(f"{ckpt_path}: {model.num_classes} classes do not fit an 8-bit PNG")
    names, palette = class_metadata(cfg, ckpt_path, model.label_classes)
    foreground_value, probabilities = binary_options(cfg, ckpt_path, model)
    image_format = input_format(cfg, ckpt_path, model.in_channels)
    mean, std = image_format.mean_std()
    settings = OmegaConf.to_container(cfg.inference, resolve=True)
    inference = InferenceConfig(**{k: v for k, v in settings.items() if v is not None})

    legend = [
        {"id": i, "name": name, "color": color}
        for i, (name, color) in enumerate(zip(names, palette.tolist(), strict=True))
    ]
    legend_text = "[\n" + ",\n".join(map(json.dumps, legend)) + "\n]\n"
    atomic_write(output / "classes.json", legend_text, "class list")
    console = Console()
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        console.print(f"precision {precision}: {reason}")
        task = progress.add_task(f"segmenting on {device}", total=len(images))
        progress.advance(task, len(skipped))
        for path in tiled:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                raster = (model, path, targets[path], inference, image_format, palette, names)
                predict_tiled(cfg, *raster, progress, skipped)
            progress.advance(task)
        batches = size_batches(sizes, cfg.batch_size)
        # decoding the next batch and encoding the outputs overlap the inference (the codecs
        # release the GIL); at most two batches of outputs wait to be written
        with ThreadPoolExecutor(max_workers=2) as io:
            ahead = (
                io.submit(read_images, batches[0], skipped, image_format.read) if batches else None
            )
            writing: deque[Future] = deque()
            written = sum(path not in skipped for path in tiled)  # outputs all on disk
            for i, batch in enumerate(batches):
                loaded = ahead.result()
                if i + 1 < len(batches):
                    ahead = io.submit(read_images, batches[i + 1], skipped, image_format.read)
                progress.advance(task, len(batch) - len(loaded))
                # the header size may disagree with the decoded one (EXIF): regroup by shape
                for shape in dict.fromkeys(im.shape for _, im in loaded):
                    group = [(p, im) for p, im in loaded if im.shape == shape]
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                        pixels = np.stack([im for _, im in group])
                        if probabilities:  # binary: the foreground probability too
                            preds, probs = segment_binary(model, pixels, inference, mean, std)
                        else:
                            preds = segment(model, pixels, inference, mean, std)
                            probs = [None] * len(preds)
                    for (path, image), pred, prob in zip(group, preds, probs, strict=True):
                        args = (targets[path], image, pred, palette, cfg.alpha)
                        extra = (cfg.overlay_format, foreground_value, prob)
                        writing.append(io.submit(write_prediction, *args, *extra))
                while len(writing) > 2 * cfg.batch_size or (i + 1 == len(batches) and writing):
                    try:
                        writing.popleft().result()  # a failed write raises here
                    except UnwritableFileError as err:
                        raise writing_stopped(err, writing, written, len(images), output) from None
                    written += 1
                    progress.advance(task)
    console.print(f"{len(images) - len(skipped)} image(s) segmented into {output}")
    report_skipped(skipped, len(images), output, cfg.get("strict", True), console)
    return output


def writing_stopped(
    err: UnwritableFileError, pending: deque[Future], written: int, total: int, output: Path
) -> UnwritableFileError:
    """The one line of a prediction write that failed (``err``), saying how many predictions
    are complete: ``written`` before it and those of ``pending`` that finish without error."""
    written += sum(future.exception() is None for future in pending)  # waits for them
    kept = f"{written} of {total} predictions were written to {output} before it stopped"
    return write_failed(err.path, err.__cause__, "prediction", kept)


def tiled_inputs(
    cfg: DictConfig, sizes: dict[Path, tuple[int, int]], targets: dict[Path, Path]
) -> list[Path]:
    """The images predicted window by window (``segformer.raster``), as ``tiled.enabled`` says:
    auto = georeferenced TIFFs and images over ``tiled.min_pixels`` pixels (with rasterio
    installed), true = all, false = none. Refuses a GeoTIFF output that would overwrite an
    input."""
    from segformer.raster import choose_tiled, probabilities_path

    settings = cfg.get("tiled") or {}
    enabled = settings.get("enabled", "auto")
    chosen, notes = choose_tiled(sizes, enabled, int(settings.get("min_pixels", 40_000_000)))
    for note in notes:
        print(note)
    inputs = {path.resolve() for path in targets}
    for path in chosen:
        tif = tiled_target(targets[path])
        for written in (tif, probabilities_path(tif)):
            if written.resolve() in inputs:
                raise InputError(f"output {written} would overwrite an input image; change output")
    return chosen


def tiled_target(target: Path) -> Path:
    """The class-map GeoTIFF of output path ``target``: ``<target>.tif``."""
    return target.with_name(f"{target.name}.tif")


def predict_tiled(
    cfg: DictConfig,
    model: torch.nn.Module,
    path: Path,
    target: Path,
    inference: InferenceConfig,
    image_format: ImageFormat,
    palette: np.ndarray,
    names: list[str],
    progress: Progress,
    skipped: dict[Path, str],
) -> None:
    """Raster ``path`` through ``segformer.raster.predict_raster``: ``<target>.tif`` (class ids,
    the palette as colour map, the input's CRS and transform) and, with
    ``tiled.probabilities``, ``<target>_probs.tif``; sliding windows of ``inference.crop`` /
    ``inference.stride``, ``tiled.window_batch`` per forward, at the raster's resolution.
    An interrupted run's outputs are continued (``tiled.resume``). An unreadable raster, or
    one whose pixels cannot be used, goes to ``skipped``."""
    from segformer.raster import TiledConfig, predict_raster

    settings = cfg.get("tiled") or {}
    batch = settings.get("window_batch", "auto")
    if batch == "auto":  # a 1024 x 1024 window fills a CPU; each one more holds ~0.2 GB (B0)
        device = next(model.parameters()).device
        batch = 1 if device.type == "cpu" else inference.window_batch
    config = TiledConfig.from_inference(
        inference,
        window_batch=int(batch),
        probabilities=settings.get("probabilities"),
        block_size=int(settings.get("block_size", 256)),
        buffer_mb=float(settings.get("buffer_mb", 256)),
    )
    task = progress.add_task(f"  {path.name}: windows", total=None)
    try:
        result = predict_raster(
            model,
            path,
            tiled_target(target),
            config,
            image_format=image_format,
            palette=palette,
            class_names=names,
            resume=bool(settings.get("resume", True)),
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    except (InputError, UnreadableFileError) as err:
        skipped[path] = str(err)
        return
    finally:
        progress.remove_task(task)
    (ch, cw), (sh, sw) = config.crop, config.stride
    what = {
        "done": f"{result.windows} windows",
        "resumed": f"resumed, {result.windows} of {result.windows_total} windows run",
        "complete": "already complete, kept",
    }[result.status]
    progress.console.print(
        f"{path}: {result.height}x{result.width} tiled ({ch}x{cw} windows, stride {sh}x{sw}; "
        f"{what}; {result.seconds:.0f} s) -> {result.target}"
        + (f" (note: {result.note})" if result.note else ""),
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


def read_sizes(images: list[Path]) -> tuple[dict[Path, tuple[int, int]], dict[Path, str]]:
    """(H, W) of every image whose header reads, and {path: error} of the others."""
    sizes: dict[Path, tuple[int, int]] = {}
    skipped: dict[Path, str] = {}
    for path in images:
        try:
            sizes[path] = image_size(path)
        except OSError as err:
            skipped[path] = str(err)
    return sizes, skipped


def read_images(
    paths: list[Path], skipped: dict[Path, str], read: Callable[[Path], np.ndarray]
) -> list[tuple[Path, np.ndarray]]:
    """(path, image) of the paths that ``read`` decodes; the others go to ``skipped`` with their
    error (a header can read while the data is truncated)."""
    loaded = []
    for path in paths:
        try:
            loaded.append((path, read(path)))
        except (OSError, ValueError) as err:
            skipped[path] = str(err)
    return loaded


def report_skipped(
    skipped: dict[Path, str], total: int, output: Path, strict: bool, console: Console
) -> None:
    """List the unreadable inputs once every other prediction is written. ``strict``: raise
    OSError (the command exits 1), else print a warning (exit 0)."""
    if not skipped:
        return
    console.print(f"skipped {len(skipped)} unreadable file(s):", markup=False, highlight=False)
    for path, error in skipped.items():
        console.print(f"  {path}: {error}", markup=False, highlight=False, soft_wrap=True)
    names = ", ".join(str(p) for p in list(skipped)[:3]) + (", ..." if len(skipped) > 3 else "")
    message = (
        f"{len(skipped)} of {total} input image(s) unreadable, skipped ({names}); the other "
        f"predictions are in {output}"
    )
    if strict:
        raise UnreadableFileError(f"{message} (strict=false: a warning and exit status 0)")
    console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


@hydra_cli("predict", config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()
