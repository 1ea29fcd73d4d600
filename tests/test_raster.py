"""Tiled prediction of rasters (segformer.raster): equal to whole-image sliding-window inference,
georeferencing and palette kept, interrupted runs resumed, nodata and non-finite pixels, and
segformer-predict on a GeoTIFF."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from children import LIMIT_FSIZE, error_line, run_command
from helpers import compose_config, write_lightning_checkpoint
from PIL import Image
from torch import nn

from segformer.data.channels import ImageFormat
from segformer.data.labels import default_palette
from segformer.data.transforms import normalize
from segformer.errors import InputError
from segformer.inference import InferenceConfig, predict_logits
from segformer.models import SegFormer
from segformer.raster import (
    SIGNATURE_TAG,
    TiledConfig,
    TilePlan,
    _Reader,
    predict_raster,
    probabilities_path,
    state_path,
)

rasterio = pytest.importorskip("rasterio")
from rasterio.transform import Affine  # noqa: E402

CRS = "EPSG:32633"
TRANSFORM = Affine(0.5, 0.0, 500_000.0, 0.0, -0.5, 4_000_000.0)  # 0.5 m pixels, north up
# near-ties: pixels whose top-2 probabilities differ by less than this may flip between two
# evaluations of the same windows batched differently (last-bit differences of a convolution)
NEAR_TIE = 1e-4


class TinyNet(nn.Module):
    """(B, C, h, w) -> logits (B, K, ceil(h/2), ceil(w/2)): local convs plus a term from the
    window's mean, so a window's logits depend on where it is (as attention's do)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 4) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, 8, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(8, num_classes, 3, padding=1)
        self.context = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x))
        return self.conv2(h) + self.context(h.mean((2, 3)))[..., None, None]


class Counting(nn.Module):
    """Counts the windows it is run on."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.num_classes, self.windows = net, net.num_classes, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.windows += len(x)
        return self.net(x)


def tiny(in_channels: int = 3, num_classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return TinyNet(in_channels, num_classes).eval()


def write_geotiff(
    path: Path,
    bands: np.ndarray,
    tiled: bool = True,
    nodata: float | None = None,
    crs: str | None = CRS,
    **options,
) -> Path:
    """(C, H, W) as a deflate GeoTIFF: tiled 32 x 32, or striped (4 rows a strip)."""
    count, height, width = bands.shape
    layout = {"tiled": True, "blockxsize": 32, "blockysize": 32} if tiled else {"blockysize": 4}
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=bands.dtype,
        crs=crs,
        transform=TRANSFORM if crs else None,
        nodata=nodata,
        compress="deflate",
        **layout,
        **options,
    ) as dst:
        dst.write(bands)
    return path


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(3, H, W) uint8 with some structure (smooth blobs plus noise)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (3, height // 16 + 2, width // 16 + 2)).astype(np.float32)
    smooth = F.interpolate(torch.from_numpy(coarse)[None], scale_factor=16, mode="bilinear")[0]
    noise = rng.normal(0, 20, (3, height, width))
    return np.clip(smooth[:, :height, :width].numpy() + noise, 0, 255).astype(np.uint8)


def reference_probs(model: nn.Module, path: Path, fmt: ImageFormat, crop, stride) -> torch.Tensor:
    """The project's whole-image sliding-window inference on the image read the project's way
    (ImageFormat.read, tifffile): softmax probabilities (K, H, W)."""
    image = fmt.read(path)
    x = normalize(torch.from_numpy(image)[None], *fmt.mean_std())
    cfg = InferenceConfig(mode="slide", crop=crop, stride=stride, window_batch=8)
    with torch.inference_mode():
        return predict_logits(model, x, cfg)[0].softmax(0)


def assert_equal_but_near_ties(
    classes: np.ndarray, probs: torch.Tensor, valid: np.ndarray | None = None
) -> int:
    """classes equal argmax(probs) (where ``valid``) except at near-ties, fewer than 0.1% of
    the pixels; returns how many differ."""
    expected = probs.argmax(0).numpy()
    differ = classes != expected
    if valid is not None:
        differ &= valid
    top2 = probs.topk(2, 0).values
    gap = (top2[0] - top2[1]).numpy()
    assert differ.mean() < 1e-3, f"{differ.sum()} of {differ.size} pixels differ"
    assert (gap[differ] < NEAR_TIE).all(), f"not near-ties: gaps {np.sort(gap[differ])[-5:]}"
    return int(differ.sum())


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_a_png_over_pillows_pixel_limit_goes_tiled(tmp_path, lightning_ckpt, monkeypatch):
    """A PNG larger than Pillow's decompression-bomb limit (179 MPix: emulated with a lower
    limit) is sized from its header and predicted window by window, not refused."""
    from segformer.predict import predict

    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(random_image(60, 80).transpose(1, 2, 0)).save(folder / "scan.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4800 px > 2x: a bomb error
    with pytest.raises(Image.DecompressionBombError), Image.open(folder / "scan.png"):
        pass
    overrides = [
        f"ckpt_path={lightning_ckpt}", f"input={folder}", f"output={tmp_path / 'out'}",
        "precision=32-true", "device=cpu", "inference.crop=64", "inference.stride=48",
        "tiled.min_pixels=4000",
    ]  # fmt: skip
    out = predict(compose_config("predict", overrides, tmp_path))
    assert read(out / "scan.tif").shape == (1, 60, 80)
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is back for everything else


@pytest.mark.slow
def test_tiled_equals_whole_image_sliding_window_segformer(tmp_path):
    """SegFormer-B0 (random weights): the tiled class map is the project's whole-image slide
    inference but for near-ties at seams; several column bands, batches of 3 windows."""
    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=4).eval()
    source = write_geotiff(tmp_path / "scene.tif", random_image(150, 300))
    cfg = TiledConfig(crop=64, stride=48, window_batch=3, block_size=32, band_width=128)
    result = predict_raster(model, source, tmp_path / "classes.tif", cfg)
    assert result.bands == 3 and result.status == "done"
    probs = reference_probs(model, source, ImageFormat(), 64, 48)
    near_ties = assert_equal_but_near_ties(read(result.target)[0], probs)
    print(f"{near_ties} near-tie pixel(s) differ of {150 * 300}")


@pytest.mark.parametrize(
    ("shape", "crop", "stride", "band_width"),
    [
        ((150, 300), 64, 48, 128),  # bands, a last window row / column ending at the border
        ((40, 300), 64, 40, 64),  # the raster shorter than the crop: windows span its height
        ((97, 131), (48, 64), (33, 50), None),  # odd sizes, one band, rectangular windows
        ((64, 200), 64, 64, 96),  # no overlap: stride = crop
    ],
)
def test_tiled_equals_whole_image_sliding_window(tmp_path, shape, crop, stride, band_width):
    model = tiny()
    source = write_geotiff(tmp_path / "scene.tif", random_image(*shape))
    cfg = TiledConfig(
        crop=crop, stride=stride, window_batch=2, block_size=32, band_width=band_width
    )
    result = predict_raster(model, source, tmp_path / "classes.tif", cfg)
    assert_equal_but_near_ties(
        read(result.target)[0], reference_probs(model, source, ImageFormat(), crop, stride)
    )
    assert result.windows == result.windows_total == TilePlan.build(*shape, cfg, 4).windows()


def test_georeferencing_palette_layout_and_probabilities(tmp_path):
    model = tiny(num_classes=5)
    source = write_geotiff(tmp_path / "scene.tif", random_image(100, 140))
    names = ["water", "road", "roof", "tree", "grass"]
    palette = np.array([[0, 0, 255], [128, 128, 128], [200, 0, 0], [0, 120, 0], [0, 255, 0]])
    crop, stride = 48, 32
    probs = reference_probs(model, source, ImageFormat(), crop, stride)
    for kind, tolerance in (("uint8", 0.5 / 255 + 1e-6), ("float16", 1e-3)):
        cfg = TiledConfig(crop=crop, stride=stride, block_size=32, probabilities=kind)
        target = tmp_path / kind / "classes.tif"
        result = predict_raster(
            model, source, target, cfg, palette=palette.astype(np.uint8), class_names=names
        )
        assert (
            result.probabilities
            == probabilities_path(target)
            == target.with_name("classes_probs.tif")
        )
        with rasterio.open(source) as src, rasterio.open(target) as out:
            assert out.crs == src.crs and out.crs.to_epsg() == 32633
            assert out.transform == src.transform
            assert (out.width, out.height, out.count, out.dtypes) == (140, 100, 1, ("uint8",))
            assert out.profile["tiled"] and out.block_shapes == [(32, 32)]
            assert out.compression.value == "DEFLATE"
            colormap = out.colormap(1)
            assert [list(colormap[i][:3]) for i in range(5)] == palette.tolist()
            assert json.loads(out.tags()["SEGFORMER_CLASSES"]) == names
            assert SIGNATURE_TAG in out.tags()
            classes = out.read(1)
        with rasterio.open(result.probabilities) as out:
            assert out.crs == src.crs and out.transform == src.transform
            assert out.count == 5 and out.descriptions == tuple(names)
            assert out.profile["tiled"] and out.compression.value == "DEFLATE"
            stored = out.read().astype(np.float64)
        stored = stored / 255 if kind == "uint8" else stored
        assert np.abs(stored - probs.numpy()).max() < tolerance
        assert_equal_but_near_ties(classes, probs)
        assert not state_path(target).exists()  # complete: no resume record left


def test_binary_model_class_map_and_foreground_probability(tmp_path):
    """A one-output model (binary): the class map is 1 where the sigmoid of the averaged window
    logits exceeds the model's threshold (background, foreground colours and names), the
    probabilities one band, the foreground's; another threshold is another signature."""
    model = tiny(num_classes=1)
    model.threshold = 0.45
    source = write_geotiff(tmp_path / "scene.tif", random_image(100, 140))
    image = ImageFormat().read(source)
    x = normalize(torch.from_numpy(image)[None], *ImageFormat().mean_std())
    with torch.inference_mode():
        slide = InferenceConfig(mode="slide", crop=48, stride=32, window_batch=8)
        p = predict_logits(model, x, slide)[0, 0].sigmoid()
    cfg = TiledConfig(crop=48, stride=32, block_size=32, probabilities="float16")
    names = ["background", "water"]
    result = predict_raster(model, source, tmp_path / "classes.tif", cfg, class_names=names)
    classes = read(result.target)[0]
    differ = classes != (p > 0.45).numpy()
    assert differ.mean() < 1e-3 and ((p - 0.45).abs().numpy()[differ] < NEAR_TIE).all()
    assert 0 < classes.mean() < 1
    with rasterio.open(result.target) as out:
        assert len(out.colormap(1)) >= 2 and json.loads(out.tags()["SEGFORMER_CLASSES"]) == names
    with rasterio.open(result.probabilities) as out:
        assert out.count == 1 and out.descriptions == ("water",)
        assert np.abs(out.read(1) - p.numpy()).max() < 1e-3
    model.threshold = 0.6
    again = predict_raster(model, source, tmp_path / "classes.tif", cfg, class_names=names)
    assert again.status == "done"  # not "complete": the threshold is part of the signature
    assert not np.array_equal(read(again.target)[0], classes)


@pytest.mark.parametrize("case", ["uint16_bands_striped", "rgba_alpha_dropped", "gray", "float"])
def test_normalised_as_image_format(tmp_path, case):
    """The model sees exactly what ImageFormat.read + normalize give for the whole file:
    band choice, alpha, grey repeated, 16-bit and float statistics; striped or tiled."""
    rng = np.random.default_rng(1)
    h, w = 40, 56
    if case == "uint16_bands_striped":
        bands = rng.integers(0, 65536, (5, h, w), dtype=np.uint16)
        path = write_geotiff(tmp_path / "a.tif", bands, tiled=False)
        fmt = ImageFormat(in_channels=3, bands=(3, 1, 0), max_value=65535)
    elif case == "rgba_alpha_dropped":
        bands = rng.integers(0, 256, (4, h, w), dtype=np.uint8)
        path = write_geotiff(tmp_path / "a.tif", bands, photometric="RGB", alpha="YES")
        fmt = ImageFormat()
    elif case == "gray":
        path = write_geotiff(tmp_path / "a.tif", rng.integers(0, 256, (1, h, w), dtype=np.uint8))
        fmt = ImageFormat()
    else:
        bands = rng.normal(100, 30, (2, h, w)).astype(np.float32)
        path = write_geotiff(tmp_path / "a.tif", bands)
        fmt = ImageFormat(in_channels=2, mean=(100, 90), std=(30, 20))
    with rasterio.open(path) as src:
        reader = _Reader(src, path, fmt)
        x = reader.model_input(reader.read(0, h, 0, w), torch.device("cpu"))
    expected = normalize(torch.from_numpy(fmt.read(path))[None], *fmt.mean_std())
    assert torch.equal(x, expected)


def test_resume_after_an_interruption(tmp_path):
    """Stopped after 3 writes, a rerun runs only the windows of the rows not written (and of
    the strip above them) and ends with the uninterrupted run's outputs; a third run finds
    the outputs complete; other settings start afresh."""
    source = write_geotiff(tmp_path / "scene.tif", random_image(200, 260))
    cfg = TiledConfig(crop=48, stride=32, window_batch=3, block_size=32, band_width=128,
                      probabilities="uint8")  # fmt: skip
    full = predict_raster(Counting(tiny()), source, tmp_path / "full.tif", cfg)
    plan = TilePlan.build(200, 260, cfg, 4)
    assert full.windows == plan.windows()

    class StopError(Exception):
        pass

    writes: list = []

    def stop_after_three(written):
        writes.append(written)
        if len(writes) == 3:
            raise StopError

    target = tmp_path / "out" / "resumed.tif"
    model = Counting(tiny())
    with pytest.raises(StopError):
        predict_raster(model, source, target, cfg, on_write=stop_after_three)
    done = json.loads(state_path(target).read_text())["done"]
    assert done[0] == writes[2].row1 > 0 and done[1:] == [0] * (len(done) - 1)
    with rasterio.open(target) as partial:  # what was written is readable
        assert partial.read(1, window=((0, done[0]), (0, 128))).shape == (done[0], 128)

    model, rewrites = Counting(tiny()), []
    again = predict_raster(model, source, target, cfg, on_write=rewrites.append)
    assert again.status == "resumed"
    assert model.windows == again.windows == plan.windows(done) < full.windows
    assert min(w.row0 for w in rewrites if w.band == 0) == done[0]  # finished rows kept
    assert np.array_equal(read(target), read(full.target))
    assert np.array_equal(read(again.probabilities), read(full.probabilities))
    assert not state_path(target).exists()

    model = Counting(tiny())
    kept = predict_raster(model, source, target, cfg)
    assert (kept.status, kept.windows, model.windows) == ("complete", 0, 0)

    # started afresh (resume=False), interrupted, rerun with another window batch: restarted
    writes.clear()
    with pytest.raises(StopError):
        predict_raster(tiny(), source, target, cfg, resume=False, on_write=stop_after_three)
    other = dataclasses.replace(cfg, window_batch=5)
    restarted = predict_raster(Counting(tiny()), source, target, other)
    assert restarted.status == "done" and restarted.note
    assert restarted.windows == plan.windows()
    assert_equal_but_near_ties(
        read(target)[0], reference_probs(tiny(), source, ImageFormat(), 48, 32)
    )


def test_nodata_pixels_are_class_255(tmp_path):
    image = random_image(96, 128)
    image[:, 10:40, 20:70] = 0  # nodata in every band
    image[0, 50:60, 0:30] = 0  # one band only: data
    source = write_geotiff(tmp_path / "scene.tif", image, nodata=0)
    model = tiny()
    cfg = TiledConfig(crop=48, stride=32, block_size=32, probabilities="uint8")
    result = predict_raster(model, source, tmp_path / "classes.tif", cfg)
    with rasterio.open(result.target) as out:
        assert out.nodata == 255
        assert out.colormap(1)[255] == (0, 0, 0, 0)
        classes = out.read(1)
    nodata = np.zeros(classes.shape, bool)
    nodata[10:40, 20:70] = True
    assert (classes[nodata] == 255).all() and (classes[~nodata] < 4).all()
    assert (read(result.probabilities)[:, nodata] == 0).all()
    # the model saw the nodata pixels as the mean colour: 0 after normalising
    x = normalize(torch.from_numpy(image.transpose(1, 2, 0).copy())[None])
    x[..., torch.from_numpy(nodata)] = 0
    slide = InferenceConfig(mode="slide", crop=48, stride=32)
    with torch.inference_mode():
        probs = predict_logits(model, x, slide)[0].softmax(0)
    assert_equal_but_near_ties(classes, probs, valid=~nodata)


def test_non_finite_pixels(tmp_path):
    bands = np.random.default_rng(0).normal(0, 1, (3, 64, 64)).astype(np.float32)
    bands[:, 5, 7] = np.nan
    bands[1, 20, 30] = np.inf
    fmt = ImageFormat(mean=(0, 0, 0), std=(1, 1, 1))
    cfg = TiledConfig(crop=32, stride=32, block_size=32)
    bad = write_geotiff(tmp_path / "bad.tif", bands)
    with pytest.raises(InputError, match=r"bad\.tif has 2 non-finite pixel\(s\).*row 5, column 7"):
        predict_raster(tiny(), bad, tmp_path / "out.tif", cfg, image_format=fmt)
    # NaN as the nodata value: the NaN pixel is nodata, the inf one (not all bands) an error
    nan_nodata = write_geotiff(tmp_path / "nan.tif", bands, nodata=float("nan"))
    with pytest.raises(InputError, match=r"nan\.tif has 1 non-finite.*row 20, column 30"):
        predict_raster(tiny(), nan_nodata, tmp_path / "out.tif", cfg, image_format=fmt)
    bands[1, 20, 30] = 0
    nan_nodata = write_geotiff(tmp_path / "nan.tif", bands, nodata=float("nan"))
    result = predict_raster(tiny(), nan_nodata, tmp_path / "out.tif", cfg, image_format=fmt)
    classes = read(result.target)[0]
    assert classes[5, 7] == 255 and (np.delete(classes.ravel(), 5 * 64 + 7) < 4).all()


def test_settings_that_cannot_tile():
    with pytest.raises(InputError, match="own resolution"):
        TiledConfig.from_inference(InferenceConfig(scale=(2048, 512), align=32))
    with pytest.raises(InputError, match="own resolution"):
        TiledConfig.from_inference(InferenceConfig(mode="slide", flip=True))
    cfg = TiledConfig.from_inference(InferenceConfig(mode="slide", crop=512, stride=341))
    assert (cfg.crop, cfg.stride) == ((512, 512), (341, 341))
    with pytest.raises(InputError, match="stride"):
        TiledConfig(crop=32, stride=48)
    with pytest.raises(InputError, match="multiple of 16"):
        TiledConfig(block_size=100)


def test_band_width_from_the_memory_budget():
    cfg = TiledConfig(crop=1024, stride=768, buffer_mb=256)
    plan = TilePlan.build(20_000, 20_000, cfg, 6)  # 6 x 1024 x 4 B a column: 10922 columns
    widths = [x1 - x0 for x0, x1 in plan.bands]
    assert len(plan.bands) == 2 and max(widths) <= 10_922
    assert all(x0 % 256 == 0 for x0, _ in plan.bands)
    # each seam is straddled by one window column, run for both bands
    extra = plan.windows() - len(plan.ys) * len(plan.xs)
    assert extra == len(plan.ys) * (len(plan.bands) - 1)
    # many classes: bands no narrower than 4 strides + a crop, whatever the budget
    assert min(x1 - x0 for x0, x1 in TilePlan.build(8000, 20_000, cfg, 150).bands[:-1]) >= 4096


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as segformer-train writes it, 6 named classes."""
    path = tmp_path_factory.mktemp("ckpt") / "last.ckpt"
    return write_lightning_checkpoint(path, ["a", "b", "c", "d", "e", "f"])


def test_predict_folder_mixes_rasters_and_photos(tmp_path, lightning_ckpt):
    """tiled.enabled=auto: the georeferenced TIFF goes tiled (GeoTIFF out), the PNG whole;
    false: both whole; inference settings that resize are refused for a tiled raster."""
    from segformer.predict import predict

    folder = tmp_path / "in"
    folder.mkdir()
    write_geotiff(folder / "geo.tif", random_image(70, 90))
    Image.fromarray(random_image(40, 50).transpose(1, 2, 0)).save(folder / "photo.png")
    base = [f"ckpt_path={lightning_ckpt}", f"input={folder}", "precision=32-true", "device=cpu"]
    slide = ["inference.crop=64", "inference.stride=48"]
    out = predict(compose_config("predict", [*base, *slide, f"output={tmp_path / 'a'}"], tmp_path))
    written = sorted(p.name for p in out.iterdir())
    assert written == ["classes.json", "geo.tif", "photo.png", "photo_color.png",
                       "photo_overlay.jpg"]  # fmt: skip
    with rasterio.open(out / "geo.tif") as geo:
        assert geo.crs.to_epsg() == 32633 and geo.transform == TRANSFORM
        palette = default_palette(6)
        assert [list(geo.colormap(1)[i][:3]) for i in range(6)] == palette.tolist()
    overrides = [*base, "tiled.enabled=false", f"output={tmp_path / 'b'}"]
    out = predict(compose_config("predict", overrides, tmp_path))
    assert (out / "geo.png").is_file() and not (out / "geo.tif").exists()
    overrides = [*base, "inference.scale=[2048,512]", f"output={tmp_path / 'c'}"]
    with pytest.raises(InputError, match="own resolution"):
        predict(compose_config("predict", overrides, tmp_path))
    overrides = [*base[:1], f"input={folder / 'geo.tif'}", f"output={folder}"]
    with pytest.raises(InputError, match=r"geo\.tif would overwrite an input"):
        predict(compose_config("predict", overrides, tmp_path))


@pytest.mark.slow
def test_segformer_predict_command_on_a_geotiff(tmp_path, lightning_ckpt):
    """The command line (python -m segformer.predict) on a GeoTIFF: the class map and
    probabilities GeoTIFFs, georeferenced, equal to predict_raster with the same weights."""
    source = write_geotiff(tmp_path / "ortho.tif", random_image(120, 200))
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "segformer.predict", f"ckpt_path={lightning_ckpt}",
        f"input={source}", f"output={out}", f"hydra.run.dir={tmp_path / 'run'}",
        "precision=32-true", "device=cpu", "inference.crop=64", "inference.stride=48",
        "tiled.probabilities=uint8", "tiled.block_size=32",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiled (64x64 windows, stride 48x48" in done.stdout
    with rasterio.open(out / "ortho.tif") as cls, rasterio.open(out / "ortho_probs.tif") as p:
        assert cls.crs.to_epsg() == 32633 and cls.transform == TRANSFORM
        assert p.crs == cls.crs and p.transform == cls.transform and p.count == 6
        assert json.loads(cls.tags()["SEGFORMER_CLASSES"]) == ["a", "b", "c", "d", "e", "f"]
        classes = cls.read(1)
    assert [c["name"] for c in json.loads((out / "classes.json").read_text())] == list("abcdef")
    model = SegFormer.from_pretrained(lightning_ckpt)
    cfg = TiledConfig(crop=64, stride=48, block_size=32)
    direct = predict_raster(model, source, tmp_path / "direct.tif", cfg)
    assert (read(direct.target)[0] != classes).mean() < 1e-3


def test_a_write_cut_short_fails_in_one_line_and_the_rerun_resumes(tmp_path, lightning_ckpt):
    """Under a file-size limit GDAL truncates an output on close and only logs it: the command
    reads each window back, stops with one line naming the file, and never marks the output
    complete; run again without the limit, it finishes equal to an uninterrupted run."""
    source = write_geotiff(tmp_path / "ortho.tif", random_image(256, 320))
    out = tmp_path / "out"
    args = [
        f"ckpt_path={lightning_ckpt}", f"input={source}", f"output={out}",
        f"hydra.run.dir={tmp_path / 'run'}", "precision=32-true", "device=cpu",
        "inference.crop=64", "inference.stride=48", "tiled.probabilities=float16",
        "tiled.block_size=32",
    ]  # fmt: skip
    cut = run_command("segformer.predict", args, LIMIT_FSIZE.format(limit=60_000))
    line = error_line(cut)
    assert f"could not write {out / 'ortho_probs.tif'}: rows " in line
    assert "did not read back as written" in line
    assert state_path(out / "ortho.tif").is_file()  # not complete: a rerun resumes or restarts
    again = run_command("segformer.predict", args)
    assert again.returncode == 0, again.stderr[-3000:]
    model = SegFormer.from_pretrained(lightning_ckpt)
    cfg = TiledConfig(crop=64, stride=48, block_size=32, probabilities="float16")
    direct = predict_raster(model, source, tmp_path / "direct.tif", cfg)
    np.testing.assert_array_equal(read(out / "ortho.tif"), read(direct.target))
    # half floats: fp32 sums differing in the last bit may round to neighbouring values
    np.testing.assert_allclose(read(out / "ortho_probs.tif"), read(direct.probabilities), atol=5e-4)
