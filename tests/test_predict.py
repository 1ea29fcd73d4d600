"""segformer-predict on mixed-size images: files, sizes, palettes, class names, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from helpers import compose_config, write_lightning_checkpoint
from PIL import Image

from segformer.callbacks import PredictionGrid
from segformer.data.folder import FolderDataModule
from segformer.data.labels import default_palette
from segformer.data.reading import read_image
from segformer.data.synthetic import SyntheticDataModule
from segformer.data.transforms import normalize
from segformer.inference import segment
from segformer.models import SegFormer
from segformer.predict import class_metadata, predict

NAMES = ["sky", "road", "car", "tree", "person", "sign"]
# relative path -> (H, W); a.png and b.jpg share a size (one batch), sub/ only with recursive=true
IMAGES = {"a.png": (48, 64), "b.jpg": (48, 64), "c.png": (70, 40), "sub/d.png": (33, 57)}


@pytest.fixture(scope="module")
def lightning_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lightning_checkpoint(tmp_path_factory.mktemp("ckpt") / "last.ckpt", NAMES)


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    for name, (h, w) in IMAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    return folder


def run_predict(tmp_path: Path, overrides: list[str]) -> Path:
    # fp32 whatever this CPU has, so outputs compare exactly with segment() below
    return predict(compose_config("predict", ["precision=32-true", *overrides], root=tmp_path))


def test_predict_folder_with_data_palette(tmp_path, lightning_ckpt, image_dir):
    out = run_predict(
        tmp_path,
        [
            f"ckpt_path={lightning_ckpt}",
            f"input={image_dir}",
            f"output={tmp_path / 'out'}",
            "data=synthetic",
            "recursive=true",
            "batch_size=2",
            "overlay_format=png",
            "device=cpu",
        ],
    )
    data = SyntheticDataModule()
    model = SegFormer.from_pretrained(lightning_ckpt)
    for name, (h, w) in IMAGES.items():
        stem = out / Path(name).with_suffix("")
        ids = Image.open(f"{stem}.png")
        assert (ids.mode, ids.size) == ("L", (w, h))  # original resolution
        ids = np.asarray(ids)
        assert ids.max() < data.num_classes
        color = Image.open(f"{stem}_color.png")
        assert color.mode == "P"
        assert color.getpalette()[: 3 * data.num_classes] == data.palette.reshape(-1).tolist()
        np.testing.assert_array_equal(np.asarray(color), ids)  # indices readable as class ids
        assert Image.open(f"{stem}_overlay.png").size == (w, h)
        # batched (a + b) and alone agree; near-ties of a random model may flip a few pixels
        alone = segment(model, read_image(image_dir / name)[None])[0]
        assert (alone == ids).mean() > 0.99
    legend = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in legend] == data.class_names
    assert [c["color"] for c in legend] == data.palette.tolist()


def test_predict_names_from_checkpoint(tmp_path, lightning_ckpt, image_dir):
    out = tmp_path / "out"
    run_predict(tmp_path, [f"ckpt_path={lightning_ckpt}", f"input={image_dir}", f"output={out}"])
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    expected = [f"{s}{suffix}" for s in "abc" for suffix in (".png", "_color.png", "_overlay.jpg")]
    assert written == sorted(["classes.json", *expected])  # not recursive: sub/d.png skipped
    legend = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in legend] == NAMES  # Lightning hyper-parameters
    palette = default_palette(len(NAMES))
    assert (
        Image.open(out / "c_color.png").getpalette()[: palette.size] == palette.reshape(-1).tolist()
    )
    assert Image.open(out / "c_overlay.jpg").size == (40, 70)


# the PASCAL VOC colour map of 6 classes
VOC_COLOURS = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128]]


def training_grid_colours(out_dir: Path, datamodule, num_classes: int) -> list[list[int]]:
    """The class colours of the ground-truth column in the picture PredictionGrid saves after a
    validation (the callback driven with a stand-in trainer)."""
    ids = np.arange(num_classes, dtype=np.uint8)[None]  # (1, K): one pixel per class
    callback = PredictionGrid()
    callback._rows = {0: (np.zeros((1, num_classes, 3), np.uint8), ids, ids, "")}
    trainer = SimpleNamespace(
        sanity_checking=False,
        datamodule=datamodule,
        default_root_dir=str(out_dir),
        global_step=0,
        loggers=[],
    )
    module = SimpleNamespace(hparams=SimpleNamespace(num_classes=num_classes))
    callback.on_validation_epoch_end(trainer, module)
    grid = np.asarray(Image.open(out_dir / "predictions" / "latest.png").convert("RGB"))
    x, y, w, _ = callback.cells[0][1]  # row 0, the ground-truth picture (enlarged)
    step = w // num_classes
    return grid[y, x + step // 2 : x + w : step][:num_classes].tolist()


def test_training_grid_and_predict_share_the_voc_palette(tmp_path, lightning_ckpt):
    """A dataset without a palette has one set of colours: the VOC colour map, in training's
    prediction grids (with the folder datamodule or none) and in segformer-predict, with
    data=folder or without data= (numbered or checkpoint classes)."""
    k = len(NAMES)
    folder = FolderDataModule(tmp_path / "data", classes=NAMES)  # no palette; nothing is read
    trained = training_grid_colours(tmp_path / "run", folder, k)
    assert training_grid_colours(tmp_path / "run_without_data", None, k) == trained
    base = [f"ckpt_path={lightning_ckpt}", f"input={tmp_path}"]
    without_data = compose_config("predict", base, root=tmp_path)
    with_folder = compose_config(
        "predict", [*base, "data=folder", f"data.classes=[{','.join(NAMES)}]"], root=tmp_path
    )
    assert class_metadata(without_data, lightning_ckpt, k)[1].tolist() == trained
    assert class_metadata(with_folder, lightning_ckpt, k)[1].tolist() == trained
    assert trained == VOC_COLOURS


def test_predict_transformers_folder(tmp_path, image_dir):
    transformers = pytest.importorskip("transformers")
    config = transformers.SegformerConfig(
        hidden_sizes=[32, 64, 160, 256],
        depths=[2, 2, 2, 2],
        decoder_hidden_size=256,
        num_labels=3,
        id2label={0: "wall", 1: "floor", 2: "lamp"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.SegformerForSemanticSegmentation(config).save_pretrained(tmp_path / "hf")
    out = tmp_path / "out"
    overrides = [f"pretrained={tmp_path / 'hf'}", f"input={image_dir / 'c.png'}", f"output={out}"]
    run_predict(tmp_path, overrides)
    assert Image.open(out / "c.png").size == (40, 70)
    legend = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in legend] == ["wall", "floor", "lamp"]


def test_predict_errors(tmp_path, lightning_ckpt, image_dir):
    ckpt = f"ckpt_path={lightning_ckpt}"
    with pytest.raises(FileNotFoundError, match="missing"):
        run_predict(tmp_path, [ckpt, f"input={tmp_path / 'missing'}"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        run_predict(tmp_path, [ckpt, f"input={tmp_path / 'empty'}"])
    (image_dir / "broken.png").write_bytes(b"not a png")
    with pytest.raises(OSError, match=r"broken\.png"):
        run_predict(tmp_path, [ckpt, f"input={image_dir}"])
    (image_dir / "broken.png").unlink()
    with pytest.raises(ValueError, match="overwrite an input"):
        run_predict(tmp_path, [ckpt, f"input={image_dir}", f"output={image_dir}"])
    with pytest.raises(ValueError, match="6 classes but data 'CamVidDataModule' has 11"):
        run_predict(tmp_path, [ckpt, f"input={image_dir}", "data=camvid"])
    with pytest.raises(ValueError, match="ckpt_path"):
        run_predict(tmp_path, [f"input={image_dir}"])


@pytest.fixture(scope="module")
def binary_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary checkpoint (model.num_classes=1) trained with threshold 0.45."""
    path = tmp_path_factory.mktemp("binary") / "last.ckpt"
    return write_lightning_checkpoint(path, ["background", "road"], num_classes=1, threshold=0.45)


def test_predict_binary_writes_0_1_or_0_255_masks_and_probabilities(
    tmp_path, binary_ckpt, image_dir
):
    """The class ids are 0 / 1 at the checkpoint's threshold (the same as segment()), 0 / 255
    with foreground_value=255, <stem>_prob.png = round(255 p); threshold= overrides."""
    model = SegFormer.from_pretrained(binary_ckpt)
    assert (model.num_classes, model.threshold) == (1, 0.45)
    ckpt, source = f"ckpt_path={binary_ckpt}", f"input={image_dir}"
    plain = run_predict(tmp_path, [ckpt, source, f"output={tmp_path / 'plain'}"])
    white_out = [f"output={tmp_path / 'white'}", "foreground_value=255", "probabilities=true"]
    white = run_predict(tmp_path, [ckpt, source, *white_out])
    other = run_predict(tmp_path, [ckpt, source, f"output={tmp_path / 'other'}", "threshold=0.6"])
    for name in ("a", "c"):
        image = read_image(image_dir / f"{name}.png")[None]
        ids = np.asarray(Image.open(plain / f"{name}.png"))
        np.testing.assert_array_equal(ids, segment(model, image)[0])
        assert set(np.unique(ids)) == {0, 1}
        np.testing.assert_array_equal(np.asarray(Image.open(white / f"{name}.png")), ids * 255)
        prob = np.asarray(Image.open(white / f"{name}_prob.png"))
        with torch.inference_mode():
            p = model(normalize(torch.from_numpy(image))).sigmoid()[0, 0].numpy()
        assert np.abs(prob.astype(int) - np.round(p * 255)).max() <= 1
        np.testing.assert_array_equal(ids, p > 0.45)
        np.testing.assert_array_equal(np.asarray(Image.open(other / f"{name}.png")), p > 0.6)
        # the colour picture and the overlay still show class ids 0 / 1
        np.testing.assert_array_equal(np.asarray(Image.open(white / f"{name}_color.png")), ids)
    legend = json.loads((plain / "classes.json").read_text())
    assert [(c["id"], c["name"]) for c in legend] == [(0, "background"), (1, "road")]
    assert not list(plain.glob("*_prob.png"))


def test_predict_binary_settings_are_checked(tmp_path, lightning_ckpt, binary_ckpt, image_dir):
    source = f"input={image_dir}"
    with pytest.raises(ValueError, match=r"foreground_value, probabilities apply to binary"):
        run_predict(
            tmp_path,
            [f"ckpt_path={lightning_ckpt}", source, "foreground_value=255", "probabilities=true"],
        )
    with pytest.raises(ValueError, match=r"foreground_value=256: .* 1-255"):
        run_predict(tmp_path, [f"ckpt_path={binary_ckpt}", source, "foreground_value=256"])
    with pytest.raises(ValueError, match=r"threshold=0: .* strictly between 0 and 1"):
        run_predict(tmp_path, [f"ckpt_path={binary_ckpt}", source, "threshold=0"])


def test_predict_and_export_start_without_importing_lightning() -> None:
    """Lightning (with torchmetrics and torch._dynamo) is 4 s of import that reading, inferring
    and writing files never use: the file commands leave it out (8.9 -> 3.6 s for one image)."""
    code = (
        "import sys, segformer.predict, segformer.export, segformer.data.reading; "
        "print(sorted(m for m in ('lightning', 'torchmetrics') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
