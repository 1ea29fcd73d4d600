"""(image, mask) file pairs -> sample dicts {"image": float32 (C, H, W) normalised (ImageNet for
8-bit RGB, see data/channels.py), "mask": int64 (H, W) with ignore_index for ignored pixels,
"name": str}."""

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segformer.data.channels import ImageFormat
from segformer.data.files import Sample
from segformer.data.reading import read_mask
from segformer.data.sampler import SampleKey
from segformer.data.transforms import Transform, eval_transform
from segformer.errors import InputError


def unpack_key(key: int | SampleKey) -> tuple[int, np.random.Generator]:
    """A dataset key -> (index, augmentation generator). Training keys from ResumableSampler
    carry their own seed, so a sample's augmentation does not depend on which worker makes it
    (the resumed run repeats the uninterrupted one). A plain index draws the seed from torch's
    RNG, which PyTorch seeds per worker and seed_everything in the main process."""
    if isinstance(key, tuple):
        index, seed = key
        return index, np.random.default_rng(seed)
    return key, np.random.default_rng(int(torch.randint(2**62, ())))


def make_sample(
    image: np.ndarray, mask: np.ndarray, name: str, transform: Transform, rng: np.random.Generator
) -> dict:
    """Transform an (H, W, C) image and (H, W) mask into the sample dict."""
    image, mask = transform(image, mask, rng)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # (C, H, W)
        "mask": torch.from_numpy(mask.astype(np.int64)),  # (H, W)
        "name": name,
    }


class SegmentationDataset(Dataset):
    """(image path, mask path) pairs -> sample dicts.

    label_map: uint8 (256,) raw mask value -> train id (None: masks hold train ids already).
    palette: uint8 (K, 3) used to decode RGB masks; colours outside it become ignore_index.
    num_classes: train ids must lie in [0, num_classes) or be ignore_index (None: unchecked).
    allowed_values: bool (256,) stored values a mask may hold (data.label_map given: the values
    it names, and ignore_index); others raise an error naming the file. None: any.
    image_format: how images are read (bands, bit depth; data/channels.py). None: 8-bit RGB.
    `preload()` decodes every pair once into memory (`data.cache_images`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Transform | None = None,
        label_map: np.ndarray | None = None,
        palette: np.ndarray | None = None,
        ignore_index: int = 255,
        num_classes: int | None = None,
        allowed_values: np.ndarray | None = None,
        image_format: ImageFormat | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform or eval_transform()
        self.label_map = label_map
        self.palette = palette if palette is not None else np.zeros((0, 3), np.uint8)
        self.ignore_index = ignore_index
        self.num_classes = num_classes
        self.allowed_values = allowed_values
        self.image_format = image_format or ImageFormat()
        self.decoded: list[tuple[np.ndarray, np.ndarray]] | None = None

    def preload(self, threads: int = 2) -> int:
        """Decode every (image, mask) pair now and keep them: later reads cost no decoding (on
        a 2-core machine PNG decoding is most of the loading work, which the training step
        shares the cores with). Called before the loader starts its workers, so they share
        these arrays with the main process. Returns the bytes kept."""
        if self.decoded is None:
            with ThreadPoolExecutor(threads) as pool:  # cv2 / PIL decode without the GIL
                self.decoded = list(pool.map(self.read_files, range(len(self.samples))))
        return sum(image.nbytes + mask.nbytes for image, mask in self.decoded)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | SampleKey) -> dict:
        index, rng = unpack_key(key)
        image, mask = self.read(index)
        return make_sample(image, mask, self.samples[index][0].stem, self.transform, rng)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index` untransformed: (H, W, C) image as `image_format` reads it (uint8 RGB
        by default), uint8 (H, W) train ids. Bad data raises OSError / ValueError naming the
        file (also from a DataLoader worker)."""
        if self.decoded is not None:  # copies: a transform may work in place (memcpy: ~50 us)
            image, mask = self.decoded[index]
            return image.copy(), mask.copy()
        return self.read_files(index)

    def read_files(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.samples[index]
        image, nodata = self.read_image_nodata(image_path)
        mask = self.read_mask(mask_path)
        self.check_size(image, mask, image_path, mask_path)
        return image, self.mask_nodata(mask, nodata)

    def read_image(self, path: Path) -> np.ndarray:
        """(H, W, C) image of `path` (for 8-bit images and the default format: exactly
        reading.read_image, uint8 RGB)."""
        return self.image_format.read(path)

    def read_image_nodata(self, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
        """`read_image` and its bool (H, W) no-data pixels (data.nodata; None: none)."""
        return self.image_format.read_with_nodata(path)

    def mask_nodata(self, mask: np.ndarray, nodata: np.ndarray | None) -> np.ndarray:
        """The mask with the image's no-data pixels set to ignore_index."""
        if nodata is None:
            return mask
        mask = mask.copy()
        mask[nodata] = self.ignore_index
        return mask

    def read_mask(self, path: Path) -> np.ndarray:
        """uint8 (H, W) train ids of mask `path`: decoded, label-mapped, range-checked."""
        return self.map_labels(self.read_raw_mask(path), path)

    def read_raw_mask(self, path: Path) -> np.ndarray:
        """uint8 (H, W) stored values of mask `path` (palette colours decoded to ids)."""
        return read_mask(path, self.palette, self.ignore_index)

    def map_labels(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Stored values -> train ids (label map), with the unmapped-value and range checks."""
        if self.allowed_values is not None:
            self.check_mapped(raw, path)
        mask = raw if self.label_map is None else self.label_map[raw]
        if self.num_classes is not None:
            self.check_ids(mask, path)
        return mask

    def check_mapped(self, raw: np.ndarray, path: Path) -> None:
        assert self.allowed_values is not None
        counts = np.bincount(raw.ravel(), minlength=256)
        unmapped = np.flatnonzero((counts > 0) & ~self.allowed_values)
        if len(unmapped):
            named = np.flatnonzero(self.allowed_values).tolist()
            raise InputError(
                f"mask {path} holds value(s) {unmapped.tolist()} ({counts[unmapped].sum()} "
                f"pixels) that data.label_map does not map (it maps {named}); add them to the "
                f"map, to a class id or to {self.ignore_index} to ignore them"
            )

    def check_ids(self, mask: np.ndarray, path: Path) -> None:
        # a wrong num_classes in the config shows up here too: as ids beyond the last class
        valid = np.zeros(256, bool)
        valid[: self.num_classes] = valid[self.ignore_index] = True
        bad = ~valid[mask]
        if bad.any():
            y, x = np.argwhere(bad)[0]
            k = self.num_classes
            mapped = " after the label map" if self.label_map is not None else ""
            hint = (
                ""
                if self.label_map is not None
                else f" Values found: {np.unique(mask[bad]).tolist()[:8]}; map stored values to "
                "class ids with data.label_map={value: class id}"
            )
            raise InputError(
                f"mask {path} has value {mask[y, x]}{mapped} at (y={y}, x={x}) ({bad.sum()} "
                f"such pixels) but the dataset has num_classes={k} (ids 0-{k - 1}, ignore "
                f"{self.ignore_index}): wrong num_classes or a mask saved in another format?" + hint
            )

    @staticmethod
    def check_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
        if mask.shape != image.shape[:2]:
            raise InputError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} "
                f"is {image.shape[1]}x{image.shape[0]}; expected the same width x height"
            )
