"""Tiled prediction for rasters of any size, in memory that does not grow with the raster.

    from segformer.raster import TiledConfig, predict_raster
    predict_raster(model, "ortho.tif", "ortho_classes.tif", TiledConfig(crop=1024, stride=768))

``predict_raster`` is the sliding-window inference of ``segformer.inference`` (``mode="slide"``)
done window by window on a file: the raster is read strip by strip through rasterio (GDAL: tiled
or striped GeoTIFF / BigTIFF, and any other format GDAL opens), normalised as ``ImageFormat``
says, cut into the same overlapping crop windows as ``sliding_window_inference`` on the whole
image would be (same grid, the last window of a row or column ending at the border), run
``window_batch`` windows per forward, and the overlaps are averaged on the logits, as there. A
row of output pixels is final once the last window row covering it has run: it is then written
(argmax, optionally softmax probabilities; a one-output binary model: its sigmoid above the
model's ``threshold``, and that sigmoid) and its logits dropped. So at most one strip of
``crop`` rows of class scores is held, ``K x crop_h x band width`` float32. A raster wider than
``TiledConfig.buffer_mb`` allows is processed in column bands (band seams on output-tile
boundaries, at a place a single window column straddles, whose windows run for both bands).
Memory: the model's forward on ``window_batch`` windows, the scores (``buffer_mb``, or
``K x crop_h x 4 B`` a column times the narrowest band, ~4 strides + a crop, for many classes),
one strip of raw input rows; none of it grows with the raster (``benchmarks/raster_memory.py``).

Outputs, both tiled (``block_size``) deflate GeoTIFFs (BigTIFF when needed) with the input's CRS
and transform (or GCPs): the class map (uint8 class ids, the palette as its colour map, class
255 = nodata) and optionally the probabilities (one band per class, binary: the foreground's;
uint8 = round(255 p) or float16). Pixels equal to the input's nodata value (in every band read)
are classed 255 and shown to the model as the mean colour (0 after normalisation); non-finite
pixels that are not nodata stop the run with an error naming the file and the place.

Resume: every write (a block-aligned run of rows of one band) is recorded in a sidecar
``<target>.resume.json`` with a signature of the input file, the weights and the settings. A
rerun with the same signature opens the outputs in update mode and computes only the windows of
the rows not yet written (and those of the strip above, whose overlap they need); its result is
the uninterrupted run's. The sidecar goes once the outputs are complete; the class map then
carries the signature (``SEGFORMER_SIGNATURE`` tag), so a rerun skips a finished raster. Any
other signature starts the outputs afresh.

Equality with whole-image sliding-window inference (``predict_classes`` with ``mode="slide"``):
the windows, normalisation, forward, the order of the logit sums and the division are the same;
only the batches of windows differ (here each batch is taken from one window row of one band),
which can change the last bits of a convolution's result, so the class maps agree except at
near-ties (``tests/test_raster.py`` counts them).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from segformer.data.channels import TIFF_SUFFIXES, ImageFormat
from segformer.data.labels import default_palette
from segformer.data.reading import image_header
from segformer.data.transforms import normalize
from segformer.errors import InputError, UnreadableFileError, UnwritableFileError, UserError
from segformer.inference import InferenceConfig, _window_starts, probabilities, threshold_of
from segformer.models.network import label_classes
from segformer.models.upsample import resize_bilinear
from segformer.sizes import pair

Size = tuple[int, int]
NODATA_CLASS = 255  # the class id of nodata pixels in the class map
GDAL_CACHE_BYTES = 64 * 2**20  # GDAL's block cache (default: 5% of the RAM, counted in RSS)
FLUSH_ROWS = 64  # rows of final scores turned into classes (and probabilities) at a time
SIGNATURE_TAG = "SEGFORMER_SIGNATURE"
PROBABILITY_TYPES = ("uint8", "float16")


class MissingExtraError(UserError, ImportError):
    """An optional dependency (an extra of the package) is not installed."""


def _rasterio() -> Any:
    try:
        import rasterio
    except ImportError:
        raise MissingExtraError(
            "tiled raster prediction needs rasterio: pip install 'segformer-lightning[geo]' "
            "(or pip install rasterio)"
        ) from None
    return rasterio


def have_rasterio() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class TiledConfig:
    """How a raster is cut, run and written.

    crop, stride: (h, w) window size and step, as ``InferenceConfig`` for ``mode="slide"`` (a
        side of the raster shorter than the crop is spanned whole, as there).
    window_batch: windows per forward (from one window row).
    probabilities: None, "uint8" (round(255 p)) or "float16": also write the class
        probabilities, one band per class.
    block_size: the output GeoTIFFs' tile side (a multiple of 16); writes are aligned to it.
    buffer_mb: the most class scores held (K x crop_h x band width float32); a raster wider than
        that is processed in column bands (at least ~4 strides + a crop wide, whatever the
        budget). ``band_width`` (a multiple of block_size) sets the band width directly.
    """

    crop: Size = (1024, 1024)
    stride: Size = (768, 768)
    window_batch: int = 4
    probabilities: Literal["uint8", "float16"] | None = None
    block_size: int = 256
    buffer_mb: float = 256.0
    band_width: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "crop", pair(self.crop, "TiledConfig.crop"))
        object.__setattr__(self, "stride", pair(self.stride, "TiledConfig.stride"))
        if min(self.stride) < 1 or any(s > c for s, c in zip(self.stride, self.crop, strict=True)):
            raise InputError(
                f"tiled stride={self.stride} with crop={self.crop}: expected 1 <= stride <= crop "
                "(a larger stride would leave pixels uncovered)"
            )
        if self.window_batch < 1:
            raise InputError(f"tiled window_batch={self.window_batch}; expected >= 1")
        if self.probabilities not in (None, *PROBABILITY_TYPES):
            raise InputError(
                f"tiled probabilities={self.probabilities!r}; expected null, 'uint8' or 'float16'"
            )
        if self.block_size < 16 or self.block_size % 16:
            raise InputError(f"tiled block_size={self.block_size}; expected a multiple of 16")
        if self.buffer_mb <= 0:
            raise InputError(f"tiled buffer_mb={self.buffer_mb}; expected > 0")
        if self.band_width is not None and (
            self.band_width < self.block_size or self.band_width % self.block_size
        ):
            raise InputError(
                f"tiled band_width={self.band_width}; expected a multiple of block_size="
                f"{self.block_size}"
            )

    @classmethod
    def from_inference(cls, cfg: InferenceConfig, **kwargs: Any) -> TiledConfig:
        """crop, stride and window_batch of an ``InferenceConfig``, which must run at the
        raster's own resolution (no resize, one scale, no flip)."""
        if cfg.scale is not None or cfg.align is not None or cfg.scales != (1.0,) or cfg.flip:
            raise InputError(
                "tiled prediction runs sliding windows at the raster's own resolution, but the "
                f"inference settings resize or augment (scale={cfg.scale}, align={cfg.align}, "
                f"scales={list(cfg.scales)}, flip={cfg.flip}); set inference.scale=null "
                "inference.align=null inference.scales=[1.0] inference.flip=false, or "
                "tiled.enabled=false to read the image whole"
            )
        kwargs.setdefault("window_batch", cfg.window_batch)
        return cls(crop=cfg.crop, stride=cfg.stride, **kwargs)


def _coverage(starts: Sequence[int], size: int, lo: int, hi: int) -> np.ndarray:
    """How many windows [s, s + size) cover each of the positions lo..hi-1 (float32)."""
    diff = np.zeros(hi - lo + 1, np.int64)
    for s in starts:
        a, b = max(s, lo), min(s + size, hi)
        if a < b:
            diff[a - lo] += 1
            diff[b - lo] -= 1
    return np.cumsum(diff[:-1]).astype(np.float32)


@dataclass(frozen=True)
class TilePlan:
    """The window grid of a raster (that of ``sliding_window_inference`` on the whole image) and
    its column bands [x0, x1)."""

    height: int
    width: int
    crop: Size  # clamped to the raster
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    bands: tuple[tuple[int, int], ...]

    @classmethod
    def build(cls, height: int, width: int, cfg: TiledConfig, num_classes: int) -> TilePlan:
        ch, cw = min(cfg.crop[0], height), min(cfg.crop[1], width)
        ys = tuple(_window_starts(height, ch, cfg.stride[0]))
        xs = tuple(_window_starts(width, cw, cfg.stride[1]))
        block = cfg.block_size
        if cfg.band_width is not None:
            max_width = cfg.band_width
        else:
            per_column = num_classes * ch * 4  # bytes of float32 scores per column of a strip
            budget = int(cfg.buffer_mb * 2**20) // per_column
            floor = 4 * cfg.stride[1] + cw  # narrower bands would recompute too many windows
            max_width = max(budget, floor, 2 * block) // block * block
        return cls(height, width, (ch, cw), ys, xs, _seams(width, xs, cw, max_width, block))

    def band_columns(self, band: int) -> list[int]:
        """Indices of the window columns overlapping band ``band``'s output columns."""
        x0, x1 = self.bands[band]
        cw = self.crop[1]
        return [c for c, x in enumerate(self.xs) if x < x1 and x + cw > x0]

    def first_row(self, done: int) -> int:
        """The first window row reaching below output row ``done`` (the rows above are final)."""
        return next((r for r, y in enumerate(self.ys) if y + self.crop[0] > done), len(self.ys))

    def windows(self, done: Sequence[int] | None = None) -> int:
        """Windows to run with ``done[j]`` rows of band j already written (None: none)."""
        done = done or [0] * len(self.bands)
        return sum(
            (len(self.ys) - self.first_row(d)) * len(self.band_columns(j))
            for j, d in enumerate(done)
            if d < self.height
        )


def _seams(width: int, xs: Sequence[int], cw: int, max_width: int, block: int) -> tuple:
    """Column bands [x0, x1) of at most ``max_width`` (a multiple of ``block``); each seam is a
    multiple of ``block`` in the second half of its band, where the fewest windows straddle."""
    bounds = [0]
    while width - bounds[-1] > max_width:
        x0 = bounds[-1]
        first = max(math.ceil(max_width / 2 / block), 1)
        candidates = [x0 + k * block for k in range(first, max_width // block + 1)]
        cost = {x: sum(s < x < s + cw for s in xs) for x in candidates}
        bounds.append(min(candidates, key=lambda x: (cost[x], -x)))
    bounds.append(width)
    return tuple(itertools.pairwise(bounds))


@dataclass(frozen=True)
class StripWritten:
    """One write of the run: output rows [row0, row1) x columns [col0, col1) of band ``band``."""

    band: int
    row0: int
    row1: int
    col0: int
    col1: int
    windows_done: int  # windows run so far in this call


@dataclass(frozen=True)
class RasterResult:
    target: Path
    probabilities: Path | None
    height: int
    width: int
    num_classes: int
    bands: int  # column bands
    windows: int  # windows run by this call
    windows_total: int  # an uninterrupted run's
    status: Literal["done", "resumed", "complete"]  # complete: already finished, nothing run
    note: str | None
    seconds: float


def probabilities_path(target: str | Path) -> Path:
    """Where the probabilities of class map ``target`` go: ``<stem>_probs<suffix>``."""
    target = Path(target)
    return target.with_name(f"{target.stem}_probs{target.suffix or '.tif'}")


def state_path(target: str | Path) -> Path:
    """The resume sidecar of class map ``target``."""
    target = Path(target)
    return target.with_name(f"{target.name}.resume.json")


def _model_digest(model: nn.Module) -> str:
    """sha256 of the weights (names, dtypes, shapes, bytes): a resume needs the same model."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


class _Reader:
    """Strips of a raster as the model's bands: which file bands to read (``ImageFormat``'s
    choice: ``bands``, alpha dropped, grey repeated), their common dtype, nodata, checks."""

    def __init__(self, src: Any, path: Path, fmt: ImageFormat) -> None:
        from rasterio.enums import ColorInterp

        self.src, self.path, self.fmt = src, path, fmt
        has_alpha = src.count > 1 and src.colorinterp[-1] == ColorInterp.alpha
        # ImageFormat.select on band indices says which bands, in which order, it would take
        picks = fmt.select(np.arange(src.count).reshape(1, 1, -1), has_alpha, path)[0, 0]
        self.indexes = sorted({int(b) + 1 for b in picks})  # rasterio's 1-based band numbers
        self.take = [self.indexes.index(int(b) + 1) for b in picks]
        dtypes = {np.dtype(src.dtypes[i - 1]) for i in self.indexes}
        if dtypes <= {np.dtype(np.uint8)}:
            self.dtype = np.dtype(np.uint8)
        elif dtypes <= {np.dtype(np.uint8), np.dtype(np.uint16)}:
            self.dtype = np.dtype(np.uint16)
        else:  # as read_bands: anything else as float32
            self.dtype = np.dtype(np.float32)
        self.nodata = src.nodata

    def read(self, row0: int, row1: int, col0: int, col1: int) -> np.ndarray:
        """(bands read, row1 - row0, col1 - col0) in ``self.dtype``; non-finite values that are
        not nodata raise InputError naming the file and the place."""
        from rasterio.errors import RasterioError
        from rasterio.windows import Window

        if row1 <= row0:
            return np.zeros((len(self.indexes), 0, col1 - col0), self.dtype)
        window = Window(col0, row0, col1 - col0, row1 - row0)
        try:
            data = self.src.read(self.indexes, window=window, out_dtype=self.dtype)
        except RasterioError as err:
            raise UnreadableFileError(
                f"image {self.path}: cannot read rows {row0}-{row1 - 1}, columns "
                f"{col0}-{col1 - 1} ({err})"
            ) from None
        if self.dtype.kind == "f":
            bad = ~np.isfinite(data).all(axis=0) & ~self.nodata_mask(data)
            if bad.any():
                rows, cols = np.nonzero(bad)
                raise InputError(
                    f"image {self.path} has {len(rows)} non-finite pixel(s) (NaN or inf) in rows "
                    f"{row0}-{row1 - 1}, e.g. at row {row0 + rows[0]}, column {col0 + cols[0]}, "
                    f"and {'no nodata value' if self.nodata is None else 'they are not nodata'}"
                    f" (nodata={self.nodata}); give the raster a nodata value (e.g. "
                    "gdal_edit.py -a_nodata nan FILE) to class them 255, or fill them"
                )
        return data

    def nodata_mask(self, data: np.ndarray) -> np.ndarray:
        """(h, w) bool: pixels whose every band read equals the nodata value."""
        if self.nodata is None:
            return np.zeros(data.shape[1:], bool)
        if math.isnan(self.nodata):
            return np.isnan(data).all(axis=0)
        value = np.asarray(self.nodata).astype(data.dtype)
        if value != self.nodata:  # not a value of this dtype (e.g. -9999 for uint16): none
            return np.zeros(data.shape[1:], bool)
        return (data == value).all(axis=0)

    def model_input(
        self, raw: np.ndarray, device: torch.device, mask: np.ndarray | None = None
    ) -> torch.Tensor:
        """(1, C, h, w) float32 of raw bands (bands read, h, w), normalised as ``segment`` does
        (``normalize`` of the (h, w, C) image), pixels of ``mask`` (nodata) 0: the mean."""
        hwc = raw[self.take].transpose(1, 2, 0)  # (h, w, C), the model's bands
        self.fmt.check_depth(hwc, self.path)
        masked = mask is not None and mask.any()
        if masked:
            hwc = np.where(mask[..., None], 0, hwc)  # finite before normalising (NaN nodata)
        mean, std = self.fmt.mean_std()
        x = normalize(torch.from_numpy(np.ascontiguousarray(hwc)).to(device)[None], mean, std)
        return x.masked_fill(torch.from_numpy(mask).to(device), 0.0) if masked else x


class _Outputs:
    """The class map (+ probabilities) GeoTIFFs: created once, then updated write by write."""

    def __init__(
        self, rio: Any, target: Path, probs: Path | None, cfg: TiledConfig, classes: int
    ) -> None:
        # classes: the model's outputs (one probability band each; 1 = binary, the foreground's)
        self.rio, self.target, self.probs, self.cfg, self.classes = rio, target, probs, cfg, classes

    def create(
        self, src: Any, palette: np.ndarray, names: Sequence[str] | None, masked: bool
    ) -> None:
        base = {
            "driver": "GTiff",
            "width": src.width,
            "height": src.height,
            "crs": src.crs,
            "transform": src.transform,
            "tiled": True,
            "blockxsize": self.cfg.block_size,
            "blockysize": self.cfg.block_size,
            "compress": "deflate",
            "bigtiff": "IF_SAFER",
            "sparse_ok": True,  # blocks of an interrupted run are not written as zeros
        }
        gcps, gcps_crs = src.gcps
        if gcps and src.transform.is_identity:  # georeferenced by control points
            base["crs"], base["gcps"] = gcps_crs, gcps
            del base["transform"]
        self.target.parent.mkdir(parents=True, exist_ok=True)
        with self.rio.open(
            self.target,
            "w",
            count=1,
            dtype="uint8",
            nodata=NODATA_CLASS if masked else None,
            **base,
        ) as dst:
            colormap = {i: (*map(int, palette[i]), 255) for i in range(label_classes(self.classes))}
            if masked:
                colormap[NODATA_CLASS] = (0, 0, 0, 0)
            dst.write_colormap(1, colormap)
            dst.set_band_description(1, "class")
            if names is not None:
                dst.update_tags(SEGFORMER_CLASSES=json.dumps(list(names)))
        if self.probs is None:
            return
        if self.cfg.probabilities == "uint8":
            kind = {"dtype": "uint8", "predictor": 2}
        else:  # half floats: Float32 stored in 16 bits
            kind = {"dtype": "float32", "nbits": 16}
        with self.rio.open(
            self.probs, "w", count=self.classes, interleave="band", **kind, **base
        ) as dst:
            for i in range(self.classes):
                k = 1 if self.classes == 1 else i  # binary: the foreground's probability
                dst.set_band_description(i + 1, names[k] if names is not None else f"class {k}")

    def write(self, classes: np.ndarray, probs: np.ndarray | None, row0: int, col0: int) -> None:
        from rasterio.windows import Window

        window = Window(col0, row0, classes.shape[1], classes.shape[0])
        for path, data in ((self.target, classes[None]), (self.probs, probs)):
            if path is None or data is None:
                continue
            # opened and closed per write: what is written is on disk with a valid TIFF directory
            with self.rio.open(path, "r+") as dst:
                dst.write(data, window=window)
            self._check_written(path, data, window)

    def _check_written(self, path: Path, data: np.ndarray, window: Any) -> None:
        """GDAL reports a failed flush on close (disk full, file-size limit) as a log line, not
        an error: read the window back, so a truncated output is never marked complete."""
        try:
            with self.rio.open(path) as dst:
                back = dst.read(window=window)
            same = (
                np.array_equal(back, data)
                if np.issubdtype(data.dtype, np.integer)
                else np.allclose(back, data, rtol=1e-3, atol=1e-4)  # stored as half floats
            )
        except self.rio.errors.RasterioError:
            same = False
        if not same:
            rows = f"rows {window.row_off}-{window.row_off + window.height}"
            raise UnwritableFileError(
                f"could not write {path}: {rows} did not read back as written (disk full or a "
                "file-size limit?); the windows written before are kept: free space and run "
                "the same command again to resume"
            )

    def finish(self, signature: str) -> None:
        with self.rio.open(self.target, "r+") as dst:
            dst.update_tags(**{SIGNATURE_TAG: signature})

    def readable(self) -> bool:
        """Whether the outputs exist and open (a failed write may have cut one short)."""
        try:
            for path in (self.target, self.probs):
                if path is not None:
                    with self.rio.open(path):
                        pass
        except self.rio.errors.RasterioError:
            return False
        return True

    def complete(self, signature: str) -> bool:
        """Whether the outputs exist and were finished with this signature."""
        if not self.target.is_file() or (self.probs is not None and not self.probs.is_file()):
            return False
        try:
            with self.rio.open(self.target) as dst:
                return dst.tags().get(SIGNATURE_TAG) == signature
        except self.rio.errors.RasterioError:
            return False


def _load_state(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, path)  # atomic: a crash leaves the old record or the new one


def _signature(
    source: Path,
    src: Any,
    fmt: ImageFormat,
    cfg: TiledConfig,
    plan: TilePlan,
    model: nn.Module,
    classes: int,
    palette: np.ndarray,
    names: Sequence[str] | None,
) -> str:
    stat = source.stat()
    record = {
        "version": 1,
        "input": [stat.st_size, stat.st_mtime_ns, src.count, src.height, src.width],
        "dtypes": list(src.dtypes),
        "nodata": repr(src.nodata),
        "model": _model_digest(model),
        "threshold": threshold_of(model),
        "classes": classes,
        "format": fmt.to_dict(),
        "config": asdict(cfg),
        "bands": plan.bands,
        "palette": np.asarray(palette).tolist(),
        "names": None if names is None else list(names),
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _num_classes(model: nn.Module, channels: int, crop: Size, device: torch.device) -> int:
    classes = getattr(model, "num_classes", None)
    if isinstance(classes, int):
        return classes
    with torch.inference_mode():  # any module: one forward of a blank window says
        return int(model(torch.zeros(1, channels, *crop, device=device)).shape[1])


def predict_raster(
    model: nn.Module,
    source: str | Path,
    target: str | Path,
    config: TiledConfig | None = None,
    *,
    image_format: ImageFormat | None = None,
    palette: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    resume: bool = True,
    progress: Callable[[int, int], None] | None = None,
    on_write: Callable[[StripWritten], None] | None = None,
) -> RasterResult:
    """Segment raster ``source`` into the class-map GeoTIFF ``target`` (and, with
    ``config.probabilities``, ``probabilities_path(target)``), window by window.

    ``model`` maps (B, C, h, w) to logits (B, K, h', w') (resized to (h, w) here, as
    ``inference._forward``), in eval mode, on its device; wrap the call in ``torch.autocast``
    for bf16. ``image_format``: the bands and normalisation (default 8-bit RGB, ImageNet
    statistics). ``palette`` (K, 3) uint8: the colour map (default the VOC colours);
    ``class_names``: band descriptions and a tag. ``resume``: continue the outputs of an
    interrupted run with the same input, weights and settings (else start afresh).
    ``progress(done, total)`` after each batch of windows; ``on_write`` after each write.
    """
    rio = _rasterio()
    cfg = config or TiledConfig()
    fmt = image_format or ImageFormat()
    source, target = Path(source), Path(target)
    probs_target = probabilities_path(target) if cfg.probabilities else None
    if not source.is_file():
        raise UnreadableFileError(f"image {source}: no such file")
    for out in (target, probs_target):
        if out is not None and out.resolve() == source.resolve():
            raise InputError(f"output {out} would overwrite the input image; change output")
    device = next(model.parameters(), torch.empty(0)).device
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(rio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", rio.errors.NotGeoreferencedWarning)
        try:
            src = stack.enter_context(rio.open(source))
        except rio.errors.RasterioError as err:
            raise UnreadableFileError(
                f"image {source} cannot be read as a raster ({err})"
            ) from None
        reader = _Reader(src, source, fmt)
        crop = (min(cfg.crop[0], src.height), min(cfg.crop[1], src.width))
        classes = _num_classes(model, fmt.in_channels, crop, device)  # outputs: 1 = binary
        shown = label_classes(classes)  # the class map's (binary: background, foreground)
        masked = reader.nodata is not None
        if classes > 256 or (masked and classes > NODATA_CLASS):
            raise InputError(
                f"{classes} classes do not fit the uint8 class map"
                + (f" beside nodata {NODATA_CLASS}" if masked else "")
            )
        palette = default_palette(shown) if palette is None else np.asarray(palette, np.uint8)
        if len(palette) < shown or (class_names is not None and len(class_names) != shown):
            raise InputError(
                f"{shown} classes, but {len(palette)} palette colours and "
                f"{'no' if class_names is None else len(class_names)} class names"
            )
        plan = TilePlan.build(src.height, src.width, cfg, classes)
        signature = _signature(source, src, fmt, cfg, plan, model, classes, palette, class_names)
        outputs = _Outputs(rio, target, probs_target, cfg, classes)
        sidecar = state_path(target)
        state = _load_state(sidecar) if resume else None
        status, note = "done", None
        total = plan.windows()

        def result(windows: int) -> RasterResult:
            return RasterResult(
                target, probs_target, plan.height, plan.width, classes, len(plan.bands),
                windows, total, status, note, time.perf_counter() - start,
            )  # fmt: skip

        resumable = state is not None and state.get("signature") == signature and outputs.readable()
        if resumable:
            done = [int(d) for d in state["done"]]
            status = "resumed"
        elif resume and state is None and outputs.complete(signature):
            status = "complete"
            return result(0)
        else:
            if state is not None:
                note = "the earlier partial outputs were for other inputs or settings: restarted"
            outputs.create(src, palette, class_names, masked)
            done = [0] * len(plan.bands)
            _save_state(sidecar, {"signature": signature, "bands": plan.bands, "done": done})
        windows_left = plan.windows(done)
        report = None if progress is None else (lambda ran: progress(ran, windows_left))
        run = _BandRunner(model, reader, plan, cfg, outputs, classes, device, report)
        if report is not None:
            report(0)
        with ThreadPoolExecutor(max_workers=1) as pool:
            for band in range(len(plan.bands)):
                for written in run.band(band, done[band], pool):
                    done[band] = written.row1
                    _save_state(
                        sidecar, {"signature": signature, "bands": plan.bands, "done": done}
                    )
                    if on_write is not None:
                        on_write(written)
        outputs.finish(signature)
        sidecar.unlink(missing_ok=True)
        return result(run.windows_run)


class _BandRunner:
    """Runs the windows of one column band, strip by strip, and yields its writes."""

    def __init__(
        self,
        model: nn.Module,
        reader: _Reader,
        plan: TilePlan,
        cfg: TiledConfig,
        outputs: _Outputs,
        classes: int,
        device: torch.device,
        report: Callable[[int], None] | None = None,
    ) -> None:
        self.model, self.reader, self.plan, self.cfg = model, reader, plan, cfg
        self.outputs, self.classes, self.device = outputs, classes, device
        self.threshold = threshold_of(model)  # one output (binary): the foreground's cut
        self.report = report
        self.windows_run = 0

    @torch.inference_mode()
    def band(self, band: int, done: int, pool: ThreadPoolExecutor) -> Iterable[StripWritten]:
        plan, cfg, read = self.plan, self.cfg, self.reader.read
        H, (ch, cw), ys, xs = plan.height, plan.crop, plan.ys, plan.xs
        if done >= H:
            return
        x0, x1 = plan.bands[band]
        cols = plan.band_columns(band)
        in0, in1 = xs[cols[0]], xs[cols[-1]] + cw  # the input columns the windows read
        col_count = torch.from_numpy(_coverage(xs, cw, x0, x1)).to(self.device)
        block = cfg.block_size
        first = plan.first_row(done)
        scores = torch.zeros(self.classes, ch, x1 - x0, device=self.device)
        top = ys[first]  # the raster row of scores[:, 0]
        strip, strip_top = None, ys[first]
        ahead = pool.submit(read, ys[first], ys[first] + ch, in0, in1)
        written = done  # rows [0, written) of the band are on disk
        pending: list[tuple[np.ndarray, np.ndarray | None]] = []  # final rows from `written` on
        for r in range(first, len(ys)):
            y = ys[r]
            new = ahead.result()
            # the raw strip of rows [y, y + ch): the overlap kept, only the new rows read
            strip = new if strip is None else np.concatenate([strip[:, y - strip_top :], new], 1)
            strip_top = y
            if r + 1 < len(ys):  # read the next strip's new rows while the model runs
                ahead = pool.submit(read, y + ch, ys[r + 1] + ch, in0, in1)
            if y > top:  # drop the rows above y (final and written), keep the overlap
                shift = y - top
                if shift < ch:  # (a copy first where the two ranges overlap)
                    kept = scores[:, shift:]
                    scores[:, : ch - shift] = kept if 2 * shift >= ch else kept.clone()
                    scores[:, ch - shift :] = 0
                else:
                    scores.zero_()
                top = y
            mask = None if self.reader.nodata is None else self.reader.nodata_mask(strip)
            for i in range(0, len(cols), cfg.window_batch):
                group = cols[i : i + cfg.window_batch]
                # normalised for the columns of this batch only: the strip stays raw
                a, b = xs[group[0]] - in0, xs[group[-1]] - in0 + cw
                part = None if mask is None else mask[:, a:b]
                x = self.reader.model_input(strip[:, :, a:b], self.device, part)
                crops = torch.cat([x[..., xs[c] - in0 - a : xs[c] - in0 - a + cw] for c in group])
                logits = self.model(crops)
                logits = resize_bilinear(logits, crops.shape[-2:]).float()  # inference._forward
                if logits.shape[1] != self.classes:
                    raise InputError(
                        f"the model returns {logits.shape[1]} classes, expected {self.classes}"
                    )
                for c, window in zip(group, logits, strict=True):
                    a, b = max(xs[c], x0), min(xs[c] + cw, x1)
                    scores[:, :, a - x0 : b - x0] += window[:, :, a - xs[c] : b - xs[c]]
                self.windows_run += len(group)
                if self.report is not None:
                    self.report(self.windows_run)
            end = ys[r + 1] if r + 1 < len(ys) else H  # rows [y, end) are final now
            lo = max(y, done)
            rows = _coverage(ys, ch, lo, end) if lo < end else None
            for a in range(lo, end, FLUSH_ROWS):  # a few rows at a time: small temporaries
                b = min(a + FLUSH_ROWS, end)
                count = torch.from_numpy(rows[a - lo : b - lo]).to(self.device)[:, None]
                final = scores[:, a - top : b - top] / (count * col_count)  # as the reference
                band_mask = None if mask is None else mask[a - y : b - y, x0 - in0 : x1 - in0]
                pending.append(self._classes_and_probs(final, band_mask))
            last = end if end == H else end // block * block
            if last > written:
                classes, probs = _take_rows(pending, last - written)
                self.outputs.write(classes, probs, written, x0)
                yield StripWritten(band, written, last, x0, x1, self.windows_run)
                written = last

    def _classes_and_probs(
        self, scores: torch.Tensor, mask: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        # binary: the sigmoid above the threshold (inference.class_map)
        binary = len(scores) == 1
        chosen = scores[0].sigmoid() > self.threshold if binary else scores.argmax(0)
        classes = chosen.to(torch.uint8).cpu().numpy()
        probs = None
        if self.cfg.probabilities is not None:
            p = probabilities(scores[None])[0]  # softmax; binary: the sigmoid
            if self.cfg.probabilities == "uint8":
                probs = (p * 255).round_().to(torch.uint8).cpu().numpy()
            else:
                probs = p.half().cpu().numpy()
        if mask is not None and mask.any():
            classes[mask] = NODATA_CLASS
            if probs is not None:
                probs[:, mask] = 0
        return classes, probs


def _take_rows(
    pending: list[tuple[np.ndarray, np.ndarray | None]], n: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """The first ``n`` rows of the pending (classes, probs) pieces, removed from ``pending``."""
    classes = np.concatenate([c for c, _ in pending], 0)
    probs = None if pending[0][1] is None else np.concatenate([p for _, p in pending], 1)
    pending.clear()
    if len(classes) > n:
        pending.append((classes[n:], None if probs is None else probs[:, n:]))
    if probs is not None and probs.dtype == np.float16:
        probs = probs[:, :n].astype(np.float32)  # GDAL's Float32 stored in 16 bits
    elif probs is not None:
        probs = probs[:, :n]
    return classes[:n], probs


def is_georeferenced(path: str | Path) -> bool:
    """Whether a TIFF carries GeoTIFF tags (read with tifffile: no rasterio needed)."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages[0].is_geotiff)
    except (tifffile.TiffFileError, ValueError, IndexError, OSError):
        return False


def exif_rotated(path: str | Path) -> bool:
    """Whether a JPEG/PNG/WebP asks for an EXIF rotation (GDAL's readers do not apply it)."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        return False
    from PIL import ExifTags

    try:
        with image_header(path) as im:
            return im.getexif().get(ExifTags.Base.Orientation, 1) not in (1, None)
    except OSError:
        return False


def choose_tiled(
    sizes: dict[Path, tuple[int, int]], enabled: bool | str, min_pixels: int
) -> tuple[list[Path], list[str]]:
    """The images to predict window by window, and notes on those that could not be.

    ``enabled``: True (every image), False (none) or "auto": georeferenced TIFFs (the output
    keeps their georeferencing) and images over ``min_pixels`` pixels, except EXIF-rotated
    photos (GDAL does not rotate them); without rasterio "auto" picks none, with a note.
    """
    if isinstance(enabled, str) and enabled.lower() in ("true", "false"):
        enabled = enabled.lower() == "true"
    if enabled not in (True, False, "auto"):
        raise InputError(f"tiled.enabled={enabled!r}; expected auto, true or false")
    if enabled is False:
        return [], []
    if enabled is True:
        _rasterio()
        return list(sizes), []
    chosen = [
        p
        for p, (h, w) in sizes.items()
        if (h * w > min_pixels and not exif_rotated(p)) or is_georeferenced(p)
    ]
    if chosen and not have_rasterio():
        names = ", ".join(p.name for p in chosen[:3]) + (", ..." if len(chosen) > 3 else "")
        note = (
            f"note: {len(chosen)} large or georeferenced image(s) ({names}) are read whole: "
            "install the geo extra (pip install 'segformer-lightning[geo]') for tiled "
            "prediction in bounded memory, written as GeoTIFF"
        )
        return [], [note]
    return chosen, []
