"""Writes that fail (file-size limit, read-only folder): one line naming the file and the cause,
the previous file intact and loadable, no partial file left. Each failure happens in a child
process: RLIMIT_FSIZE (with SIGXFSZ ignored, so the write gets EFBIG) or, when the suite runs as
root (who may write anywhere), a child without the capability to override permissions."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from children import LIMIT_FSIZE, as_unprivileged, error_line, leftovers, run_child, run_command
from helpers import TINY, write_lightning_checkpoint
from PIL import Image

from segformer.atomic_checkpoint import AtomicCheckpointIO
from segformer.checkpoint_io import atomic_write


def small_checkpoint() -> dict:
    return {"global_step": 2, "state_dict": {"w": torch.zeros(4)}}


SAVE_BIG = """
import torch
from segformer.atomic_checkpoint import AtomicCheckpointIO
try:
    AtomicCheckpointIO().save_checkpoint(
        {{"global_step": 4, "state_dict": {{"w": torch.zeros(1_000_000)}}}}, {path!r}
    )
except OSError as err:
    print(type(err).__name__, err.errno, err, sep="|")
"""


def test_checkpoint_over_the_file_size_limit_keeps_the_previous_one(tmp_path: Path) -> None:
    last = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(small_checkpoint(), last)
    proc = run_child(LIMIT_FSIZE.format(limit=200_000), SAVE_BIG.format(path=str(last)))
    kind, code, message = proc.stdout.strip().split("|")
    assert (kind, int(code)) == ("UnwritableFileError", 27), proc.stderr[-2000:]
    assert str(last) in message and "file size limit" in message and "EFBIG" in message
    assert "the previous last.ckpt is intact" in message and "\n" not in message
    assert torch.load(last, weights_only=True)["global_step"] == 2  # loadable, the old one
    assert leftovers(last.parent) == []


def test_checkpoint_into_a_read_only_folder_says_permission_denied(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoints"
    last = folder / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(small_checkpoint(), last)
    folder.chmod(0o555)
    try:
        proc = run_child("", SAVE_BIG.format(path=str(last)), as_unprivileged())
    finally:
        folder.chmod(0o755)
    kind, code, message = proc.stdout.strip().split("|")
    assert kind == "UnwritableFileError", proc.stderr[-2000:]
    assert int(code) == 13 and "permission denied" in message and str(last) in message
    assert "the previous last.ckpt is intact" in message
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert leftovers(folder) == []


def test_a_first_checkpoint_that_fails_says_there_was_none(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    proc = run_child(LIMIT_FSIZE.format(limit=100_000), SAVE_BIG.format(path=str(last)))
    message = proc.stdout.strip().split("|")[2]
    assert "no earlier last.ckpt was there" in message
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_over_the_limit_keeps_the_old_text(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.json"
    atomic_write(metrics, '{"val/mIoU": 0.5}')
    body = f"""
from segformer.checkpoint_io import atomic_write
try:
    atomic_write({str(metrics)!r}, "x" * 50_000, "metrics")
except OSError as err:
    print(type(err).__name__, err, sep="|")
"""
    proc = run_child(LIMIT_FSIZE.format(limit=10_000), body)
    kind, message = proc.stdout.strip().split("|")
    assert kind == "UnwritableFileError", proc.stderr[-2000:]
    assert message.startswith(f"could not write metrics {metrics}: file size limit")
    assert metrics.read_text() == '{"val/mIoU": 0.5}' and leftovers(tmp_path) == []


@pytest.mark.slow
def test_train_whose_checkpoint_cannot_be_written_says_so_in_one_line(tmp_path: Path) -> None:
    args = [f"paths.root_dir={tmp_path}", *TINY, "callbacks.prediction_grid=null"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = run_command("segformer.train", args, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "synthetic_b0").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    size = last.stat().st_size  # the resumed run's logs stay far below half of it
    resume = ["ckpt_path=last", "trainer.max_steps=4"]
    limit = LIMIT_FSIZE.format(limit=size // 2)
    line = error_line(run_command("segformer.train", [*args, *resume], limit, env=env))
    assert line.startswith(f"segformer-train: error: could not write checkpoint {last}: "), line
    assert "file size limit" in line and "the previous last.ckpt is intact" in line
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert leftovers(last.parent) == []


@pytest.mark.slow
def test_onnx_export_over_the_file_size_limit_keeps_the_previous_file(tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    from segformer.models import SegFormer

    weights = tmp_path / "b0.pt"
    torch.save(SegFormer("b0", num_classes=2).state_dict(), weights)
    output = tmp_path / "out" / "model.onnx"
    output.parent.mkdir()
    output.write_bytes(b"the previous export")
    args = [f"paths.root_dir={tmp_path}", f"ckpt_path={weights}", f"output={output}"]
    limit = LIMIT_FSIZE.format(limit=1_000_000)
    line = error_line(run_command("segformer.export", [*args, "height=64", "width=64"], limit))
    assert line.startswith(f"segformer-export: error: could not write ONNX model {output}: ")
    assert "file size limit" in line and "the previous model.onnx is intact" in line
    assert output.read_bytes() == b"the previous export" and leftovers(output.parent) == []


@pytest.mark.slow
def test_transformers_export_over_the_file_size_limit_keeps_the_previous_folder(
    tmp_path: Path,
) -> None:
    """config.json and model.safetensors are replaced together or not at all: the weights (15
    MB) exceed the limit, so the small config.json, written first, is not replaced either."""
    from segformer.models import SegFormer

    weights = tmp_path / "b0.pt"
    torch.save(SegFormer("b0", num_classes=2).state_dict(), weights)
    output = tmp_path / "hf"
    output.mkdir()
    (output / "config.json").write_text("the previous config")
    (output / "model.safetensors").write_bytes(b"the previous weights")
    args = [f"paths.root_dir={tmp_path}", f"ckpt_path={weights}", f"output={output}"]
    limit = LIMIT_FSIZE.format(limit=1_000_000)
    line = error_line(run_command("segformer.export", [*args, "format=transformers"], limit))
    weights_out = output / "model.safetensors"
    assert line.startswith("segformer-export: error: could not write transformers model "), line
    assert f"{weights_out}: file size limit exceeded" in line and "EFBIG" in line
    assert "the previous model.safetensors is intact (no partial file left)" in line
    assert (output / "config.json").read_text() == "the previous config"
    assert weights_out.read_bytes() == b"the previous weights" and leftovers(output) == []


NAMES = ["background", "thing"]


def predict_inputs(root: Path, sizes: dict[str, int]) -> tuple[Path, Path]:
    """A checkpoint and a folder of noise images (name -> side in pixels)."""
    ckpt = write_lightning_checkpoint(root / "last.ckpt", NAMES)
    rng = np.random.default_rng(0)
    for name, side in sizes.items():
        (root / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(noise).save(root / "images" / name)
    return ckpt, root / "images"


def predict_args(root: Path, ckpt: Path, images: Path) -> list[str]:
    paths = [f"paths.root_dir={root}", f"ckpt_path={ckpt}", f"input={images}"]
    return [*paths, f"output={root / 'out'}", "precision=32-true", "device=cpu", "recursive=true"]


def prediction_files(out: Path, stem: str) -> list[Path]:
    return [out / f"{stem}.png", out / f"{stem}_color.png", out / f"{stem}_overlay.jpg"]


@pytest.mark.slow
def test_predict_into_a_read_only_folder_says_what_was_written(tmp_path: Path) -> None:
    """sub/ of the output folder is read-only: a and b are written whole, c (in sub/) stops the
    command with one line naming its file, the cause and the count written before it."""
    ckpt, images = predict_inputs(tmp_path, {"a.png": 32, "b.png": 32, "sub/c.png": 32})
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "sub").chmod(0o555)
    try:
        proc = run_command(
            "segformer.predict", predict_args(tmp_path, ckpt, images), prefix=as_unprivileged()
        )
    finally:
        (out / "sub").chmod(0o755)
    line = error_line(proc)
    assert line == (
        f"segformer-predict: error: could not write prediction {out}/sub/c.png: permission "
        f"denied (errno 13 EACCES); 2 of 3 predictions were written to {out} before it stopped "
        "(no partial file left)"
    )
    for stem in ("a", "b"):
        for path in prediction_files(out, stem):
            Image.open(path).load()  # whole, readable images
    assert list((out / "sub").iterdir()) == [] and leftovers(out) == []


@pytest.mark.slow
def test_predict_over_the_file_size_limit_writes_no_partial_prediction(tmp_path: Path) -> None:
    """The 512 px image's outputs exceed a 100 kB file-size limit: none of its three files is
    left (not even the ones that fit), the 32 px images' are whole, one line says so."""
    sizes = {"a.png": 32, "b.png": 32, "c.png": 512}
    ckpt, images = predict_inputs(tmp_path, sizes)
    out = tmp_path / "out"
    limit = LIMIT_FSIZE.format(limit=100_000)
    line = error_line(run_command("segformer.predict", predict_args(tmp_path, ckpt, images), limit))
    failed = re.fullmatch(
        rf"segformer-predict: error: could not write prediction {re.escape(str(out))}/"
        r"(c\.png|c_color\.png|c_overlay\.jpg): file size limit exceeded .*\(errno 27 EFBIG\); "
        rf"2 of 3 predictions were written to {re.escape(str(out))} before it stopped "
        r"\(no partial file left\)",
        line,
    )
    assert failed, line
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["classes.json"] + [p.name for stem in ("a", "b") for p in prediction_files(out, stem)]
    )
    for stem in ("a", "b"):
        for path in prediction_files(out, stem):
            Image.open(path).load()
    assert leftovers(out) == []
