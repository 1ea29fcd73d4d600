"""segformer-export: ONNX with dynamic batch/height/width, onnxruntime parity with PyTorch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import compose_config, write_lightning_checkpoint

from segformer.export import check_onnx, export
from segformer.models import SegFormer

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ATOL = 1e-4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A b0 state dict with non-trivial BatchNorm statistics, so the head's folding matters."""
    torch.manual_seed(0)
    model = SegFormer("b0", num_classes=5)
    with torch.no_grad():
        model.head.bn.running_mean.uniform_(-1, 1)
        model.head.bn.running_var.uniform_(0.5, 2)
        model.head.bn.weight.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("weights") / "segformer_b0.pt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("export")
    overrides = [
        f"ckpt_path={model_path}",
        f"output={root / 'model.onnx'}",
        "height=64",
        "width=96",
        "check_size=[40,72]",
    ]
    diffs = export(compose_config("export", overrides, root=root))
    return root / "model.onnx", diffs


def test_export_parity_at_two_sizes(exported, model_path):
    path, diffs = exported
    assert len(diffs) == 2 and max(diffs) <= ATOL  # the command's own check
    graph = onnx.load(str(path)).graph
    dims = [d.dim_param for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    # independently of the command: two other sizes, batch 1 and 2, odd sides
    model = SegFormer.from_pretrained(model_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 75, 51), (2, 3, 128, 160)]:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = model(x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == (shape[0], 5, *shape[2:])
        assert np.abs(got - ref).max() <= ATOL


@pytest.mark.parametrize("size", [(1, 1), (7, 5), (31, 33)])
def test_export_runs_images_smaller_than_the_network_needs(exported, model_path, size):
    """The graph carries the model's small-image rule (edge pad to 29, crop back) with dynamic
    amounts: thumbnails run and match PyTorch, batch 1 and 2."""
    model = SegFormer.from_pretrained(model_path)
    session = ort.InferenceSession(str(exported[0]), providers=["CPUExecutionProvider"])
    for batch in (1, 2):
        x = torch.randn(batch, 3, *size)
        with torch.no_grad():
            ref = model(x).numpy()
        (got,) = session.run(None, {"image": x.numpy()})
        assert got.shape == (batch, 5, *size)
        assert np.abs(got - ref).max() <= ATOL


def test_export_at_a_thumbnail_size(tmp_path, model_path):
    """Exported at 7x5 (traced on a padded input) and checked by the command at 1x1; the
    graph still runs a full-size image."""
    overrides = [f"ckpt_path={model_path}", f"output={tmp_path / 't.onnx'}", "height=7"]
    overrides += ["width=5", "check_size=[1,1]"]
    assert max(export(compose_config("export", overrides, root=tmp_path))) <= ATOL
    model = SegFormer.from_pretrained(model_path)
    assert max(check_onnx(model, tmp_path / "t.onnx", [(1, 3, 64, 48)])) <= ATOL


def test_export_metadata(exported):
    props = {p.key: p.value for p in onnx.load(str(exported[0])).metadata_props}
    assert (props["variant"], props["num_classes"]) == ("b0", "5")
    assert json.loads(props["class_names"]) == ["0", "1", "2", "3", "4"]
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])


def test_check_fails_above_tolerance(exported, model_path):
    model = SegFormer.from_pretrained(model_path)
    with pytest.raises(RuntimeError, match="differs from PyTorch"):
        check_onnx(model, exported[0], [(1, 3, 64, 96)], atol=1e-12)


def test_export_class_map(tmp_path, model_path):
    overrides = [f"ckpt_path={model_path}", f"output={tmp_path / 'c.onnx'}", "classes=true"]
    overrides += ["height=64", "width=64", "check_size=[48,80]"]
    gaps = export(compose_config("export", overrides, root=tmp_path))
    assert max(gaps) <= ATOL
    session = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"])
    (classes,) = session.run(None, {"image": np.zeros((3, 3, 40, 56), np.float32)})
    assert (classes.dtype, classes.shape) == (np.int64, (3, 40, 56))


@pytest.mark.slow  # a fresh interpreter imports torch, hydra, onnx
def test_cli_exits_nonzero_above_tolerance(tmp_path, model_path):
    """The console entry point (python -m segformer.export) fails when the check fails."""
    cmd = [sys.executable, "-m", "segformer.export", f"ckpt_path={model_path}"]
    cmd += [f"output={tmp_path / 'm.onnx'}", "height=64", "width=64", "check_size=[48,48]"]
    cmd += ["atol=1e-12"]
    env = {**os.environ, "SEGFORMER_ROOT": str(tmp_path)}  # Hydra's run directory in tmp_path
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "differs from PyTorch" in result.stderr
    assert (tmp_path / "m.onnx").is_file()


@pytest.fixture(scope="module")
def binary_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A binary checkpoint (model.num_classes=1, threshold 0.4, trained BatchNorm statistics)."""
    path = tmp_path_factory.mktemp("binary") / "binary.ckpt"
    write_lightning_checkpoint(path, ["background", "crack"], num_classes=1, threshold=0.4)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    generator = torch.Generator().manual_seed(1)
    state["model.head.bn.running_mean"].uniform_(-1, 1, generator=generator)
    state["model.head.bn.running_var"].uniform_(0.5, 2, generator=generator)
    torch.save(checkpoint, path)
    return path


@pytest.mark.parametrize("classes", [False, True], ids=["logits", "classes"])
def test_export_binary_one_output(tmp_path, binary_path, classes):
    """One logit: onnxruntime gives PyTorch's (B, 1, H, W) logits, or classes = its sigmoid above
    the checkpoint's threshold, at sizes other than the export's; the metadata says both."""
    overrides = [f"ckpt_path={binary_path}", f"output={tmp_path / 'b.onnx'}", "height=64"]
    overrides += ["width=64", "check_size=[40,72]", f"classes={str(classes).lower()}"]
    assert max(export(compose_config("export", overrides, root=tmp_path))) <= ATOL
    model = SegFormer.from_pretrained(binary_path)
    session = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 75, 51, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    (got,) = session.run(None, {"image": x.numpy()})
    if classes:
        want = (logits[:, 0].sigmoid() > 0.4).long().numpy()
        assert (got.dtype, got.shape) == (np.int64, (2, 75, 51))
        assert (got != want).mean() < 1e-3 and 0 < want.mean() < 1
    else:
        assert got.shape == (2, 1, 75, 51)
        assert np.abs(got - logits.numpy()).max() <= ATOL
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "b.onnx")).metadata_props}
    assert (props["num_classes"], props["threshold"]) == ("1", "0.4")
    assert json.loads(props["class_names"]) == ["background", "crack"]
