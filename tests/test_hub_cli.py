"""segformer-eval and segformer-predict take a Hub repo id as ckpt_path (offline, from a cache in
the real layout)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY, compose_config
from hubcache import add_to_hub_cache, offline_hub_cache
from PIL import Image

from segformer.eval import evaluate
from segformer.predict import predict

transformers = pytest.importorskip("transformers")
pytest.importorskip("huggingface_hub")


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return offline_hub_cache(tmp_path, monkeypatch)


NAMES = ["background", "disc", "square", "triangle", "ring", "cross"]  # the synthetic data's


@pytest.fixture
def repo_id(hub_cache: Path, tmp_path: Path) -> str:
    """A random transformers B0 with the synthetic data's 6 classes, cached as acme/synthetic."""
    config = transformers.SegformerConfig(num_labels=6, id2label=dict(enumerate(NAMES)))
    torch.manual_seed(0)
    model = transformers.SegformerForSemanticSegmentation(config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(tmp_path / "export")
    add_to_hub_cache(hub_cache, "acme/synthetic", tmp_path / "export")
    return "acme/synthetic"


def test_eval_by_repo_id(repo_id: str, tmp_path: Path) -> None:
    data = [o for o in TINY if o.startswith("data.")]
    overrides = [f"ckpt_path={repo_id}", "run_name=hub", "trainer.limit_val_batches=1", *data]
    metrics = evaluate(compose_config("eval", overrides, tmp_path))
    assert 0.0 <= metrics["mIoU"] <= 1.0
    (report_path,) = (tmp_path / "logs" / "eval" / "hub").glob("*/metrics.json")
    report = json.loads(report_path.read_text())
    assert report["checkpoint"] == repo_id


def test_predict_by_repo_id_uses_its_class_names(repo_id: str, tmp_path: Path) -> None:
    image = tmp_path / "in" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), np.uint8)).save(image)
    out = predict(
        compose_config(
            "predict",
            [f"ckpt_path={repo_id}", f"input={image}", f"output={tmp_path / 'out'}"],
            root=tmp_path,
        )
    )
    legend = json.loads((out / "classes.json").read_text())
    assert [c["name"] for c in legend] == NAMES
    assert np.asarray(Image.open(out / "a.png")).shape == (40, 56)
