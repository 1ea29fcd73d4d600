"""One batch of the real CamVid copy next to the repository (../shared/data/camvid)."""

from pathlib import Path

import pytest
import torch

from segformer.data.camvid import CamVidDataModule

CAMVID = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "camvid"

pytestmark = pytest.mark.skipif(
    not (CAMVID / "trainannot").is_dir(), reason=f"real CamVid not found at {CAMVID.resolve()}"
)


def test_real_camvid_batch():
    dm = CamVidDataModule(CAMVID, batch_size=2, num_workers=0)
    assert len(dm.dataset("train", train=True)) == 367 and len(dm.dataset("val", False)) == 101
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (2, 3, 360, 360)
    labels = set(batch["mask"].unique().tolist())
    assert labels <= set(range(11)) | {255} and len(labels - {255}) > 1
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape == (1, 3, 360, 480) and val["mask"].dtype == torch.int64
