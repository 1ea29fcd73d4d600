"""The validation picture (callbacks.PredictionGrid): samples spread over the split and fixed
over the run, titled columns, error column, legend, and the same picture in TensorBoard and
wandb."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from segformer.callbacks import PredictionGrid
from segformer.visualize import (
    ERROR_COLOR,
    hatch,
    legend_classes,
    prediction_figure,
    spread_samples,
)

PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75]], np.uint8)
NAMES = ["background", "disc", "square"]


def test_spread_samples_evenly_over_the_sorted_files() -> None:
    keys = [f"img_{i:03d}.png" for i in range(100)][::-1]  # listed in reverse
    picked = spread_samples(keys, 6)
    assert len(set(picked)) == 6
    order = sorted(int(keys[p][4:7]) for p in picked)
    assert order == [8, 25, 41, 58, 75, 91]  # one per sixth of the split, not 6 neighbours
    assert [int(keys[p][4:7]) for p in picked] == order  # in file order
    assert spread_samples(keys[:3], 6) == [2, 1, 0]  # fewer samples than asked: all of them


def test_spread_samples_one_per_group_first() -> None:
    # a large drive and two small ones: each drive is shown before a second frame of any
    groups = ["A"] * 50 + ["B"] * 3 + ["C"] * 2
    keys = [f"{g}_{i:03d}" for i, g in enumerate(groups)]
    picked = spread_samples(keys, 4, groups)
    assert sorted(groups[p] for p in picked) == ["A", "A", "B", "C"]
    assert spread_samples(keys, 3, groups) == [25, 51, 54]  # the middle frame of each drive
    # more groups than pictures: groups spread over their sorted names, one frame each
    many = [f"g{i:02d}" for i in range(20) for _ in range(3)]
    picked = spread_samples([f"{g}_{i}" for i, g in enumerate(many)], 4, many)
    assert [many[p] for p in picked] == ["g02", "g07", "g12", "g17"]


def test_figure_columns_errors_ignore_and_legend() -> None:
    mask = np.zeros((8, 8), np.int64)
    mask[:4] = 1
    mask[:, :2] = 255  # ignored
    pred = mask.copy()
    pred[mask == 255] = 2
    pred[6:, 4:] = 2  # wrong: 2 x 4 pixels
    image = np.full((8, 8, 3), 100, np.uint8)
    picture, cells = prediction_figure([image], [mask], [pred], PALETTE, NAMES, captions=["a"])
    assert picture.dtype == np.uint8 and picture.ndim == 3
    (img_box, truth_box, pred_box, err_box) = cells[0]
    assert img_box[2] == 128  # 8 px enlarged 16x (min_side) so the titles fit
    assert img_box[1] > 30  # below the column titles

    def cell(box: tuple[int, int, int, int]) -> np.ndarray:
        x, y, w, h = box
        return picture[y : y + h, x : x + w][::16, ::16]  # back at sample resolution

    truth = cell(truth_box)
    assert (truth[4:, 2:] == PALETTE[0]).all() and (truth[:4, 2:] == PALETTE[1]).all()
    ignore_cell = picture[truth_box[1] : truth_box[1] + 16, truth_box[0] : truth_box[0] + 16]
    assert (ignore_cell == hatch(16, 16)).all()  # ignore pixels apart from background (black)
    errors = cell(err_box)
    red = (errors == ERROR_COLOR).all(axis=2)
    assert red.sum() == 8 and red[6:, 4:].all()  # only the scored wrong pixels
    assert not red[:, :2].any()  # predictions over ignore pixels are no errors
    assert (cell(pred_box)[6:, 4:] == PALETTE[2]).all()
    legend = picture[err_box[1] + err_box[3] :]
    for colour in PALETTE[1:]:
        assert (legend == colour).all(axis=2).any()  # a swatch of each class


def test_legend_lists_the_shown_classes_when_there_are_many() -> None:
    masks = [np.array([[3, 3], [255, 40]])]
    preds = [np.array([[3, 7], [7, 40]])]
    assert legend_classes(masks, preds, 11, max_classes=12) == list(range(11))
    assert legend_classes(masks, preds, 150, max_classes=12) == [3, 7, 40]


class FilesDataset(torch.utils.data.Dataset):
    """Stand-in for SegmentationDataset: file pairs, and samples of 3 classes."""

    def __init__(self, n: int) -> None:
        self.samples = [
            (Path(f"/d/{'AB'[i >= n // 2]}_{i:03d}.png"), Path(f"/m/{i}.png")) for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.samples)


def stand_in(tmp_path: Path, n: int = 24, batch: int = 4, loggers: list | None = None):
    """(trainer, module, batches): what PredictionGrid reads from Lightning, for a validation
    split of n files in two groups (the first half A_*, the rest B_*) seen in batches of `batch`."""
    dataset = FilesDataset(n)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch)
    datamodule = SimpleNamespace(
        palette=PALETTE,
        class_names=NAMES,
        ignore_index=255,
        group=r"([AB])_",
        group_file=None,
        groups=lambda samples: [s[0].name[0] for s in samples],
    )
    trainer = SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        val_dataloaders=loader,
        num_val_batches=[len(loader)],
        datamodule=datamodule,
        default_root_dir=str(tmp_path),
        global_step=0,
        loggers=loggers or [],
    )
    module = SimpleNamespace(
        hparams=SimpleNamespace(num_classes=3, ignore_index=255), class_names=NAMES
    )
    rng = np.random.default_rng(0)
    batches = []
    for start in range(0, n, batch):
        masks = torch.from_numpy(rng.integers(0, 3, (batch, 16, 16)))
        masks[:, 0] = 255
        batches.append(
            (
                {
                    "image": torch.randn(batch, 3, 16, 16),
                    "mask": masks,
                    "name": [f"s{start + i}" for i in range(batch)],
                },
                masks.clone().clamp(max=2),
            )
        )
    return trainer, module, batches


def validate(callback: PredictionGrid, trainer, module, batches) -> np.ndarray:
    callback.on_validation_epoch_start(trainer, module)
    for index, (batch, preds) in enumerate(batches):
        callback.on_validation_batch_end(trainer, module, preds, batch, index)
    callback.on_validation_epoch_end(trainer, module)
    return np.asarray(Image.open(Path(trainer.default_root_dir) / "predictions" / "latest.png"))


def test_callback_shows_the_same_spread_files_at_every_validation(tmp_path: Path) -> None:
    trainer, module, batches = stand_in(tmp_path)
    callback = PredictionGrid(num_images=4)
    first = validate(callback, trainer, module, batches)
    captions = [row[3] for _, row in sorted(callback._rows.items())]
    assert sorted(callback.chosen) == [3, 9, 15, 21]  # both groups, over the whole split
    assert [c.split(":")[0] for c in captions] == [
        "A_003.png (group A)",
        "A_009.png (group A)",
        "B_015.png (group B)",
        "B_021.png (group B)",
    ]
    trainer.global_step = 5
    second = validate(callback, trainer, module, batches)
    assert [row[3] for _, row in sorted(callback._rows.items())] == captions
    assert first.shape == second.shape
    saved = sorted(p.name for p in (tmp_path / "predictions").iterdir())
    assert saved == ["latest.png", "val_step000000.png", "val_step000005.png"]
    # limit_val_batches=2: chosen among the 8 samples validated
    trainer.num_val_batches = [2]
    validate(callback, trainer, module, batches)
    assert all(p < 8 for p in callback.chosen) and len(callback._rows) == 4


def test_tensorboard_gets_the_picture(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer, module, batches = stand_in(tmp_path, loggers=[logger])
    trainer.global_step = 7
    picture = validate(PredictionGrid(num_images=3), trainer, module, batches)
    logger.experiment.flush()
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    events.Reload()
    (image,) = events.Images("val/predictions")
    assert image.step == 7
    assert (image.height, image.width) == picture.shape[:2]


def test_wandb_gets_the_picture_and_images_with_masks(tmp_path: Path, monkeypatch) -> None:
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "disabled")  # no network, no files: check what is sent
    logger = WandbLogger(save_dir=str(tmp_path), project="test")
    logged = []
    monkeypatch.setattr(
        logger, "log_metrics", lambda metrics, step=None: logged.append((step, metrics))
    )
    trainer, module, batches = stand_in(tmp_path, loggers=[logger])
    trainer.global_step = 3
    picture = validate(PredictionGrid(num_images=2), trainer, module, batches)
    (step, grid), (step2, samples) = logged
    assert step == step2 == 3
    (grid_image,) = grid["val/predictions"]
    assert isinstance(grid_image, wandb.Image)
    assert (grid_image.image.height, grid_image.image.width) == picture.shape[:2]
    images = samples["val/samples"]
    assert len(images) == 2
    for image in images:
        assert image._caption.endswith("of pixels wrong")
        masks = image._masks
        assert set(masks) == {"predictions", "ground_truth"}
        labels = masks["ground_truth"]._val["class_labels"]
        assert labels == {0: "background", 1: "disc", 2: "square", 255: "ignore"}
        truth = masks["ground_truth"]._val["mask_data"]
        assert truth.shape == (16, 16) and 255 in truth  # ignore rows kept as ignore


@pytest.mark.slow
def test_training_run_writes_the_picture_to_file_and_tensorboard(tmp_path: Path) -> None:
    from helpers import compose_train
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import segformer.train as train_mod

    cfg = compose_train(
        tmp_path,
        [
            "data.num_val=12",
            "trainer.limit_val_batches=null",
            "trainer.max_steps=4",
            "logger=tensorboard",
        ],
    )
    train_mod.train(cfg)
    run = Path(cfg.paths.output_dir)
    latest = np.asarray(Image.open(run / "predictions" / "latest.png"))
    assert latest.shape[1] > 4 * 128 and latest.std() > 0
    assert sorted(p.name for p in (run / "predictions").iterdir()) == [
        "latest.png",
        "val_step000002.png",
        "val_step000004.png",
    ]
    (log_dir,) = {p.parent for p in (run / "tensorboard").rglob("events.out.tfevents.*")}
    events = EventAccumulator(str(log_dir), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("val/predictions")
    assert [i.step for i in images] == [2, 4]
    assert (images[-1].height, images[-1].width) == latest.shape[:2]
    assert json.loads((run / "metrics.json").read_text())["val/mIoU"] >= 0


@pytest.mark.slow
def test_wandb_offline_run_stores_the_picture_and_masks(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    from lightning.pytorch.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")  # a real run, written to disk only
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), project="test", offline=True)
    trainer, module, batches = stand_in(tmp_path, loggers=[logger])
    validate(PredictionGrid(num_images=2), trainer, module, batches)
    logger.experiment.finish()
    (media,) = tmp_path.glob("wandb/offline-run-*/files/media/images")
    assert len(list(media.glob("val/predictions_*.png"))) == 1
    assert len(list(media.glob("val/samples_*.png"))) == 2
    assert len(list(media.glob("mask/val/samples_*.mask.png"))) == 4  # truth + prediction each
