"""Images as people have them: any number of bands, 8 or 16 bits, TIFF or the usual formats.

`read_bands` decodes a file to (H, W, C) in its stored bit depth (uint8, uint16, else float32):
grayscale stays one band, RGB(A) comes as RGB(A), a multi-band TIFF (tifffile) comes with its
bands last whatever its planar layout. `ImageFormat` (the `data.in_channels`, `data.bands`,
`data.keep_alpha`, `data.mean`, `data.std`, `data.max_value` keys) turns that into the
`in_channels` bands the model sees and says how they are normalised:

- `bands` picks bands of the file by 0-based index (alpha included, e.g. [3, 2, 1]);
- without `bands`, an alpha band is dropped unless `keep_alpha`, and a grayscale image is
  repeated to 3 channels when the model takes 3 (what reading it as RGB always did);
- `mean` / `std` (one value, or one per channel, in stored units: 0-255 for 8-bit, 0-65535 for
  16-bit; `segformer-check-data` prints them) normalise each channel as (x - mean) / std;
  without them the ImageNet statistics apply on the 0-`max_value` scale (channel i takes
  ImageNet channel i mod 3, a single channel their average), which for 8-bit RGB is the
  paper's normalisation exactly. A 16-bit image then needs `max_value` (65535, or 4095 for
  12-bit data): reading it as if it were 8-bit would train on garbage, so that is an error.
- non-finite values (NaN, inf: a float raster's no-data pixels) are an error naming the file and
  the count, unless `nodata` says what no-data is (a value in stored units, or "nan"): then
  non-finite pixels and pixels equal to it (in any band) are no-data: filled with the channel
  mean (0 once normalised) and, in training data, labelled ignore_index (`read_with_nodata`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from segformer.data.files import IMAGE_SUFFIXES
from segformer.data.reading import _truncated_jpeg
from segformer.errors import InputError, UnreadableFileError

# ImageNet statistics on the 0-1 scale; transforms.IMAGENET_MEAN / STD are these x 255
IMAGENET_MEAN01 = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD01 = np.array([0.229, 0.224, 0.225], np.float32)

TIFF_SUFFIXES = (".tif", ".tiff")


def _bands_last(array: np.ndarray, axes: str, path: Path) -> np.ndarray:
    """tifffile's series array with axes like "YX", "YXS", "SYX", "CYX", "QYX" -> (H, W, C)."""
    if "Y" not in axes or "X" not in axes:
        raise InputError(f"image {path}: TIFF axes {axes!r} have no Y and X (not an image)")
    extra = [i for i, a in enumerate(axes) if a not in "YX" and array.shape[i] > 1]
    if len(extra) > 1:
        raise InputError(
            f"image {path}: TIFF of shape {array.shape} (axes {axes!r}) has more than one "
            "non-spatial axis; expected (H, W), (H, W, bands) or (bands, H, W)"
        )
    order = [axes.index("Y"), axes.index("X"), *extra]
    rest = [i for i in range(array.ndim) if i not in order]  # singleton axes
    array = array.transpose(order + rest).reshape(array.shape[order[0]], array.shape[order[1]], -1)
    return array


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    import tifffile  # a dependency, imported here: only TIFF datasets need it

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = _bands_last(series.asarray(), series.axes, path)
            # ExtraSamples 1 (associated) / 2 (unassociated alpha) mark the last band as alpha
            extras = tuple(getattr(tif.pages[0], "extrasamples", ()) or ())
    except (tifffile.TiffFileError, ValueError, IndexError, KeyError) as err:
        if isinstance(err, ValueError) and str(err).startswith(f"image {path}"):
            raise
        raise UnreadableFileError(f"image {path} is not a readable TIFF ({err})") from None
    has_alpha = bool(extras) and int(extras[-1]) in (1, 2)
    return array, has_alpha


def read_bands(path: str | Path) -> tuple[np.ndarray, bool]:
    """(H, W, C) in the stored dtype (uint8 / uint16 kept, others as float32), bands in file
    order (RGB, not OpenCV's BGR), and whether the last band is alpha. JPEGs get their EXIF
    rotation applied, as ``read_image``. Unreadable files raise OSError naming the file."""
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        array, has_alpha = _read_tiff(path)
    else:
        data = path.read_bytes()
        is_jpeg = data[:2] == b"\xff\xd8"
        # JPEGs: any depth/colour with the EXIF rotation; others unchanged, so alpha is seen
        flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if is_jpeg else cv2.IMREAD_UNCHANGED
        try:
            array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        except cv2.error:  # an empty file fails an assertion rather than returning None
            array = None
        if array is None or (is_jpeg and _truncated_jpeg(data)):
            raise UnreadableFileError(
                f"image {path} is corrupt or truncated ({len(data)} bytes); expected a complete "
                f"image file ({', '.join(IMAGE_SUFFIXES)})"
            )
        if array.ndim == 2:
            array = array[..., None]
        has_alpha = array.shape[2] == 4
        if array.shape[2] == 3:
            array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
        elif has_alpha:
            array = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)
    if array.dtype == bool:
        array = array.astype(np.uint8)
    elif array.dtype not in (np.uint8, np.uint16):
        array = array.astype(np.float32)
    return np.ascontiguousarray(array), has_alpha


def _per_channel(value: Any, channels: int, key: str) -> np.ndarray | None:
    """A config value (None, one number, or one per channel) -> float32 (channels,) or None."""
    if value is None:
        return None
    values = np.atleast_1d(np.asarray(value, np.float32)).ravel()
    if len(values) == 1:
        values = np.repeat(values, channels)
    if len(values) != channels:
        raise InputError(
            f"data.{key} has {len(values)} values {values.tolist()} for in_channels={channels}; "
            "give one value, or one per channel"
        )
    return values


@dataclass(frozen=True)
class ImageFormat:
    """How images are read and normalised (see the module docstring); `data.*` config keys."""

    in_channels: int = 3
    bands: tuple[int, ...] | None = None
    keep_alpha: bool = False
    mean: tuple[float, ...] | None = None  # stored units, per channel
    std: tuple[float, ...] | None = None
    max_value: float = 255.0  # full scale of the stored values when mean/std are not given
    nodata: float | str | None = None  # a stored value, "nan" (non-finite only), or None

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodata", _nodata_value(self.nodata))
        if self.in_channels < 1:
            raise InputError(f"data.in_channels={self.in_channels}; expected >= 1")
        if self.bands is not None:
            bands = tuple(int(b) for b in self.bands)
            if len(bands) != self.in_channels or min(bands) < 0:
                raise InputError(
                    f"data.bands={list(bands)} must list in_channels={self.in_channels} "
                    "band indices (0-based)"
                )
            object.__setattr__(self, "bands", bands)
        if (self.mean is None) != (self.std is None):
            raise InputError("give both data.mean and data.std, or neither (ImageNet statistics)")
        for key in ("mean", "std"):
            values = _per_channel(getattr(self, key), self.in_channels, key)
            object.__setattr__(self, key, None if values is None else tuple(values.tolist()))
        if self.std is not None and min(self.std) <= 0:
            raise InputError(f"data.std={list(self.std)}: every value must be > 0")
        if self.max_value <= 0:
            raise InputError(f"data.max_value={self.max_value}; expected > 0")
        object.__setattr__(self, "max_value", float(self.max_value))

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> ImageFormat:
        """From `to_dict` output (checkpoint hyper-parameters) or config keys; None: default."""
        values = {k: v for k, v in (values or {}).items() if v is not None}
        for key in ("bands", "mean", "std"):
            if key in values:
                values[key] = tuple(np.atleast_1d(values[key]).tolist())
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (stored in checkpoints, so predict and export normalise the same way)."""
        return {
            "in_channels": self.in_channels,
            "bands": None if self.bands is None else list(self.bands),
            "keep_alpha": self.keep_alpha,
            "mean": None if self.mean is None else list(self.mean),
            "std": None if self.std is None else list(self.std),
            "max_value": self.max_value,
            "nodata": self.nodata,
        }

    @property
    def is_default(self) -> bool:
        return self == ImageFormat()

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 (C,) mean and std in stored units: the given ones, or ImageNet's x max_value
        (for 8-bit RGB exactly transforms.IMAGENET_MEAN / IMAGENET_STD)."""
        if self.mean is not None and self.std is not None:
            return np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        if self.in_channels == 1:  # a gray channel: the average, as summed pretrained weights
            mean01, std01 = IMAGENET_MEAN01.mean(keepdims=True), IMAGENET_STD01.mean(keepdims=True)
        else:  # channel i <-> ImageNet channel i mod 3, as the repeated pretrained weights
            index = np.arange(self.in_channels) % 3
            mean01, std01 = IMAGENET_MEAN01[index], IMAGENET_STD01[index]
        scale = np.float32(self.max_value)
        return mean01 * scale, std01 * scale

    def select(self, array: np.ndarray, has_alpha: bool, path: Path) -> np.ndarray:
        """The `in_channels` bands of a decoded (H, W, C) image (see the module docstring)."""
        found = array.shape[2]
        if self.bands is not None:
            if max(self.bands) >= found:
                raise InputError(
                    f"image {path} has {found} band(s) but data.bands={list(self.bands)} asks "
                    f"for band {max(self.bands)} (0-based)"
                )
            return np.ascontiguousarray(array[..., list(self.bands)])
        if has_alpha and not self.keep_alpha:
            array, found = array[..., :-1], found - 1
        if found == self.in_channels:
            return array
        if found == 1 and self.in_channels == 3:
            return np.repeat(array, 3, axis=2)  # grayscale shown to an RGB model
        if has_alpha and not self.keep_alpha and found + 1 == self.in_channels:
            raise InputError(
                f"image {path} marks its last band as alpha, which is dropped, leaving {found} "
                f"channel(s) for data.in_channels={self.in_channels}; set data.keep_alpha=true "
                "to use it as a band"
            )
        what = " (alpha dropped)" if has_alpha and not self.keep_alpha else ""
        raise InputError(
            f"image {path} has {found} channel(s){what} but data.in_channels="
            f"{self.in_channels}; set data.in_channels={found} (and model.in_channels), or "
            "pick bands with data.bands=[...] (0-based)"
        )

    def check_depth(self, array: np.ndarray, path: Path) -> None:
        """Without mean/std the scale is max_value: refuse 16-bit or float data read as 8-bit."""
        if self.mean is not None:
            return
        if array.dtype == np.uint16 and self.max_value <= 255:
            raise InputError(
                f"image {path} is 16-bit (max value {int(array.max())}) but data.max_value="
                f"{self.max_value:g} (8-bit); set data.max_value=65535 (4095 for 12-bit data), "
                "or per-band data.mean/data.std (segformer-check-data prints them)"
            )
        if array.dtype == np.float32:
            raise InputError(
                f"image {path} holds {array.dtype} values; set data.mean and data.std "
                "(segformer-check-data prints them) so they are normalised as intended"
            )

    def read(self, path: str | Path) -> np.ndarray:
        """(H, W, in_channels) uint8 / uint16 / float32 of image `path` (no-data pixels filled
        with the channel mean: see `read_with_nodata`)."""
        return self.read_with_nodata(path)[0]

    def read_with_nodata(self, path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
        """(H, W, in_channels) image of `path` and bool (H, W) no-data pixels (None: none).
        Non-finite values without `nodata` set raise InputError naming the file and the count;
        with it, no-data pixels (non-finite, or equal to `nodata` in any band) are set to the
        channel mean, so they are 0 after normalisation."""
        path = Path(path)
        array, has_alpha = read_bands(path)
        array = self.select(array, has_alpha, path)
        invalid = self.nodata_pixels(array, path)
        self.check_depth(array, path)
        if invalid is not None:
            array = array.copy() if not array.flags.writeable else array
            array[invalid] = self.mean_std()[0].astype(array.dtype)
        return array, invalid

    def nodata_pixels(self, array: np.ndarray, path: Path) -> np.ndarray | None:
        """bool (H, W) pixels with a non-finite or `nodata` value in any band (None: none);
        non-finite values without `nodata` set are an InputError naming the file."""
        invalid = None
        if array.dtype.kind == "f":
            finite = np.isfinite(array)
            if not finite.all():
                if self.nodata is None:
                    raise InputError(non_finite_message(array, finite, path))
                invalid = ~finite.all(axis=2)
        if isinstance(self.nodata, float) and _holds(array.dtype, self.nodata):
            # float data: the stored float32 of the value (-3.4028235e38 as GDAL writes it)
            equal = (array == array.dtype.type(self.nodata)).any(axis=2)
            invalid = equal if invalid is None else invalid | equal
        return invalid if invalid is not None and invalid.any() else None


def _holds(dtype: np.dtype, value: float) -> bool:
    """Whether images of `dtype` can store `value` (-9999 is no uint16 pixel)."""
    if dtype.kind == "f":
        return True
    info = np.iinfo(dtype)
    return value.is_integer() and info.min <= value <= info.max


def _nodata_value(value: Any) -> float | str | None:
    """`data.nodata` -> None, a finite float, or "nan" (a string: NaN != NaN would make two
    equal formats compare unequal)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in ("nan", "none", "null"):
        return "nan" if value.strip().lower() == "nan" else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(
            f"data.nodata={value!r}; expected a number in stored units (e.g. 0, -9999) or nan"
        ) from None
    if np.isnan(number):
        return "nan"
    if not np.isfinite(number):
        raise InputError(
            f"data.nodata={value!r}: inf is no-data already with any data.nodata; give a "
            "finite value or nan"
        )
    return number


def non_finite_message(array: np.ndarray, finite: np.ndarray, path: Path) -> str:
    """The error of an image holding NaN / inf values, with counts and the first one."""
    nan = int(np.isnan(array).sum())
    inf = int((~finite).sum()) - nan
    y, x, band = (int(i) for i in np.argwhere(~finite)[0])
    counts = ", ".join(f"{n:,} {k}" for n, k in ((nan, "NaN"), (inf, "inf")) if n)
    return (
        f"image {path} has {nan + inf:,} non-finite value(s) ({counts}; the first at y={y}, "
        f"x={x}, band {band}); set data.nodata=nan (or data.nodata=<no-data value>) to ignore "
        "such pixels in the loss and zero them in the input, or fix the file"
    )
