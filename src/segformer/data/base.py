"""What every dataset shares: file pairing, image/mask reading, label maps, the LightningDataModule.

A new on-disk dataset is a subclass of `SegmentationDataModule` that sets CLASSES, PALETTE and
LAYOUT and implements `list_samples(split)` (and `label_map(split)` when raw mask values are not
train ids). A sample is {"image": float32 (3, H, W) ImageNet-normalised, "mask": int64 (H, W)
with ignore_index for ignored pixels, "name": str}.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from segformer.data.sampler import ResumableSampler, SampleKey, ShardSampler
from segformer.data.transforms import Compose, Transform, eval_transform, train_transform

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_SUFFIXES = (".png", ".bmp", ".tif", ".tiff")  # lossless only

Sample = tuple[Path, Path]  # (image path, mask path)


# ----------------------------------------------------------------------------- files


def index_files(
    folder: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES, recursive: bool = False
) -> dict[str, Path]:
    """Files under `folder` whose name ends with one of `suffixes` (any case), keyed by their
    path relative to `folder` minus that suffix, e.g. "aachen/aachen_000000_000019"."""
    if not folder.is_dir():
        raise FileNotFoundError(f"folder {folder} not found")
    files: dict[str, Path] = {}
    for path in sorted(folder.rglob("*") if recursive else folder.iterdir()):
        name = path.name.lower()
        suffix = next((s for s in suffixes if name.endswith(s.lower())), None)
        if suffix is None or not path.is_file():
            continue
        key = path.relative_to(folder).as_posix()[: -len(suffix)]
        if key in files:
            raise ValueError(f"{files[key]} and {path} have the same name {key!r}; keep one")
        files[key] = path
    return files


def pair_files(
    images: Mapping[str, Path], masks: Mapping[str, Path], keys: Sequence[str] | None = None
) -> list[Sample]:
    """Pair images and masks by key. `keys` (a split list) selects and orders the pairs;
    without it every image needs a mask and every mask an image."""
    if keys is None:
        for key, mask in masks.items():
            if key not in images:
                raise FileNotFoundError(f"mask {mask} has no image (no image named {key!r})")
        keys = list(images)
    pairs = []
    for key in keys:
        if key not in images:
            raise FileNotFoundError(f"image {key!r} of the split list not found")
        if key not in masks:
            raise FileNotFoundError(f"image {images[key]} has no mask (no mask named {key!r})")
        pairs.append((images[key], masks[key]))
    return pairs


def read_split_list(path: Path) -> list[str]:
    """Sample keys of a split file: one per line, blank lines skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"split list {path} not found")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


# ----------------------------------------------------------------------------- labels


def make_label_map(mapping: Mapping[int, int], default: int | None = None) -> np.ndarray:
    """256-entry uint8 lookup table raw mask value -> train id. Values missing from `mapping`
    keep their value, or become `default` when given."""
    lut = np.arange(256, dtype=np.uint8) if default is None else np.full(256, default, np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def reduce_zero_label_map(ignore_index: int = 255) -> np.ndarray:
    """mmseg reduce_zero_label: 0 (unlabelled) -> ignore, v -> v - 1, 255 -> ignore."""
    shifted = {v: v - 1 for v in range(1, 255)}
    return make_label_map({**shifted, 0: ignore_index, 255: ignore_index})


def default_palette(num_classes: int) -> np.ndarray:
    """The PASCAL VOC colour map (bits of the class id spread over R, G, B), uint8 (K, 3)."""
    palette = np.zeros((num_classes, 3), np.uint8)
    for k in range(num_classes):
        c = k
        for shift in range(7, -1, -1):
            for channel in range(3):
                palette[k, channel] |= ((c >> channel) & 1) << shift
            c >>= 3
    return palette


def rgb_to_index(rgb: np.ndarray, palette: np.ndarray, fill: int) -> np.ndarray:
    """Colour mask (H, W, 3) -> class ids (H, W) uint8; colours not in `palette` become `fill`."""
    weights = np.array([1 << 16, 1 << 8, 1], np.int32)
    codes = rgb.astype(np.int32) @ weights  # (H, W)
    palette_codes = palette.astype(np.int32) @ weights  # (K,)
    order = np.argsort(palette_codes)
    pos = np.searchsorted(palette_codes[order], codes).clip(max=len(order) - 1)
    ids = order[pos]
    return np.where(palette_codes[ids] == codes, ids, fill).astype(np.uint8)


# ----------------------------------------------------------------------------- reading


def _truncated_jpeg(data: bytes) -> bool:
    """Whether JPEG bytes end before the end-of-image marker FF D9 (libjpeg decodes such a file
    with only a warning, the missing part grey). Walks the header segments to the first scan:
    byte stuffing keeps FF D9 out of scan data. False when the header cannot be walked."""
    pos = 2  # after the start-of-image marker FF D8
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        if data[pos + 1] == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", pos) < 0
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return False


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB, EXIF rotation applied."""
    data = Path(path).read_bytes()
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    # cv2 returns None for an unreadable or truncated PNG, but a truncated JPEG decodes
    if image is None or (data[:2] == b"\xff\xd8" and _truncated_jpeg(data)):
        raise OSError(
            f"image {path} is corrupt or truncated ({len(data)} bytes); expected a complete "
            f"image file ({', '.join(IMAGE_SUFFIXES)})"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, palette: np.ndarray, fill: int = 255) -> np.ndarray:
    """uint8 (H, W) raw ids: index PNGs (mode P / L) keep their indices, RGB masks are decoded
    with `palette` (unknown colours -> fill)."""
    try:
        with Image.open(path) as im:
            if im.mode in ("RGB", "RGBA"):
                if not len(palette):
                    raise ValueError(
                        f"mask {path} is an RGB image but the dataset has no palette; expected "
                        "an index mask (PNG mode P or L) or a palette in the data config"
                    )
                return rgb_to_index(np.asarray(im.convert("RGB")), palette, fill)
            mode, mask = im.mode, np.asarray(im)
    except OSError as err:  # PIL.UnidentifiedImageError included
        raise OSError(
            f"mask {path} is corrupt or truncated ({err}); expected a complete lossless image "
            f"({', '.join(MASK_SUFFIXES)})"
        ) from None
    if mask.ndim != 2 or mask.max(initial=0) > 255:
        raise ValueError(
            f"mask {path}: expected 8-bit class ids (PNG mode P or L) or an RGB palette mask, "
            f"got mode {mode} with shape {mask.shape} and max {mask.max()}"
        )
    return mask.astype(np.uint8)


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
    """Transform a uint8 (H, W, 3) image and (H, W) mask into the sample dict."""
    image, mask = transform(image, mask, rng)
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),  # (3, H, W)
        "mask": torch.from_numpy(mask.astype(np.int64)),  # (H, W)
        "name": name,
    }


class SegmentationDataset(Dataset):
    """(image path, mask path) pairs -> sample dicts.

    label_map: uint8 (256,) raw mask value -> train id (None: masks hold train ids already).
    palette: uint8 (K, 3) used to decode RGB masks; colours outside it become ignore_index.
    num_classes: train ids must lie in [0, num_classes) or be ignore_index (None: unchecked).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Transform | None = None,
        label_map: np.ndarray | None = None,
        palette: np.ndarray | None = None,
        ignore_index: int = 255,
        num_classes: int | None = None,
    ) -> None:
        self.samples = list(samples)
        self.transform = transform or eval_transform()
        self.label_map = label_map
        self.palette = palette if palette is not None else np.zeros((0, 3), np.uint8)
        self.ignore_index = ignore_index
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | SampleKey) -> dict:
        index, rng = unpack_key(key)
        image, mask = self.read(index)
        return make_sample(image, mask, self.samples[index][0].stem, self.transform, rng)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Sample `index` untransformed: uint8 (H, W, 3) RGB image, uint8 (H, W) train ids.
        Bad data raises OSError / ValueError naming the file (also from a DataLoader worker)."""
        image_path, mask_path = self.samples[index]
        image, mask = read_image(image_path), self.read_mask(mask_path)
        self.check_size(image, mask, image_path, mask_path)
        return image, mask

    def read_mask(self, path: Path) -> np.ndarray:
        """uint8 (H, W) train ids of mask `path`: decoded, label-mapped, range-checked."""
        mask = read_mask(path, self.palette, self.ignore_index)
        if self.label_map is not None:
            mask = self.label_map[mask]
        if self.num_classes is not None:
            self.check_ids(mask, path)
        return mask

    def check_ids(self, mask: np.ndarray, path: Path) -> None:
        # a wrong num_classes in the config shows up here too: as ids beyond the last class
        valid = np.zeros(256, bool)
        valid[: self.num_classes] = valid[self.ignore_index] = True
        bad = ~valid[mask]
        if bad.any():
            y, x = np.argwhere(bad)[0]
            k = self.num_classes
            mapped = " after the label map" if self.label_map is not None else ""
            raise ValueError(
                f"mask {path} has value {mask[y, x]}{mapped} at (y={y}, x={x}) ({bad.sum()} "
                f"such pixels) but the dataset has num_classes={k} (ids 0-{k - 1}, ignore "
                f"{self.ignore_index}): wrong num_classes or a mask saved in another format?"
            )

    @staticmethod
    def check_size(image: np.ndarray, mask: np.ndarray, image_path: Path, mask_path: Path) -> None:
        if mask.shape != image.shape[:2]:
            raise ValueError(
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {image_path} "
                f"is {image.shape[1]}x{image.shape[0]}; expected the same width x height"
            )


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


# ----------------------------------------------------------------------------- datamodule


class SegmentationDataModule(L.LightningDataModule):
    """Shared data module: splits, transforms, loaders, class metadata.

    root: dataset folder (see the subclass LAYOUT). batch_size: PER DEVICE. val_batch_size:
    val/test/predict batch (default 1: eval images keep their own size). num_workers: None ->
    min(4, CPUs). pin_memory: None -> when CUDA is available. crop_size: (h, w) or int.
    scale: base (long, short) bounds of the train resize, sampled at ratio_range.
    cat_max_ratio / photometric: see transforms.train_transform. eval_resize: (long, short) to
    resize val/test images (not masks) in the loader; None leaves the eval resize to inference.
    eval: the dataset's inference settings ({mode, scale, align, crop, stride}) for the model
    config; kept as-is in `eval_settings`. seed: seeds shuffling and augmentation workers.
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
        ignore_index: int = 255,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        eval_resize: Sequence[int] | None = None,
        eval: Mapping[str, Any] | None = None,  # named like the config key the model reads
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= ignore_index <= 255:
            raise ValueError(f"ignore_index must fit a uint8 mask (0-255), got {ignore_index}")
        self.root = Path(root).expanduser() if root is not None else None
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = min(4, os.cpu_count() or 1) if num_workers is None else num_workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.crop_size = _pair(crop_size)
        self.ignore_index = ignore_index
        self.train_split, self.val_split, self.test_split = train_split, val_split, test_split
        self.eval_settings = dict(eval or {})
        self.seed = seed
        self.train_transform: Compose = train_transform(
            self.crop_size, _pair(scale), ratio_range, cat_max_ratio, ignore_index, photometric
        )
        self.eval_transform: Compose = eval_transform(
            None if eval_resize is None else _pair(eval_resize)
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
        """`list_samples` with the dataset's name and expected layout in every error."""
        layout = f"Expected layout for {self.name}:\n{self.LAYOUT}"
        if self.root is None or not self.root.is_dir():
            raise FileNotFoundError(f"{self.name}: dataset root {self.root} not found. {layout}")
        try:
            samples = self.list_samples(split)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{self.name} split {split!r}: {err}. {layout}") from err
        if not samples:
            raise ValueError(f"{self.name}: split {split!r} under {self.root} is empty. {layout}")
        return samples

    def make_dataset(self, split: str, train: bool) -> Dataset:
        return SegmentationDataset(
            self.samples(split),
            self.train_transform if train else self.eval_transform,
            self.label_map(split),
            self.mask_palette,
            self.ignore_index,
            self.num_classes,
        )

    def dataset(self, split: str, train: bool) -> Dataset:
        """The (cached) dataset of `split` with the train or the eval transform."""
        if (split, train) not in self.datasets:
            self.datasets[split, train] = self.make_dataset(split, train)
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

    # --- loaders
    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.dataset(split, train)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        if train:
            if len(dataset) // world < self.batch_size:
                raise ValueError(
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
