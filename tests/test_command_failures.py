"""Every command, run as users run it (a child process), where the machine misbehaves: a
read-only folder, two launches at once, a float TIFF with NaN no-data pixels. Each one ends with
one line naming the file and the cause (exit 1), or finishes with whole files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from children import as_unprivileged, error_line, leftovers, run_command
from helpers import TINY, write_lightning_checkpoint
from owndata import folder_overrides, make_folder, write_image
from PIL import Image

CLASSES = ["bg", "fg"]

# the least each command needs to start (the failure comes before anything is read)
COMMANDS = {
    "train": [*TINY],
    "eval": ["ckpt_path=model.ckpt"],
    "predict": ["ckpt_path=model.ckpt", "input=images"],
    "export": ["ckpt_path=model.ckpt"],
    "check_data": ["data=folder", "data.root=data", "data.classes=[bg,fg]"],
}
RUN_NAMES = {"train": "synthetic_b0", "eval": "synthetic", "predict": "default"}
RUN_NAMES |= {"export": "onnx", "check_data": "folder"}


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_a_read_only_root_stops_every_command_in_one_line(tmp_path: Path, command: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    root.chmod(0o555)
    try:
        args = [f"paths.root_dir={root}", *COMMANDS[command]]
        proc = run_command(f"segformer.{command}", args, prefix=as_unprivileged())
    finally:
        root.chmod(0o755)
    base = root / "logs" / command / RUN_NAMES[command]
    assert error_line(proc) == (
        f"segformer-{command.replace('_', '-')}: error: could not create a run directory under "
        f"{base}: permission denied (errno 13 EACCES); set paths.root_dir=DIR (or "
        "paths.log_dir=DIR) to a folder you can write"
    )
    assert list(root.iterdir()) == []


@pytest.mark.slow
def test_a_check_data_report_that_cannot_be_written_says_so(tmp_path: Path) -> None:
    """The report folder (paths.output_dir) is read-only: the checks run, then one line names
    report.txt and the cause, and no partial file is left."""
    data = make_folder(tmp_path / "data")
    reports = tmp_path / "reports"
    reports.mkdir()
    reports.chmod(0o555)
    args = [f"paths.root_dir={tmp_path}", f"paths.output_dir={reports}"]
    args += ["data=folder", f"data.root={data}", "data.classes=[bg,fg]"]
    try:
        proc = run_command("segformer.check_data", args, prefix=as_unprivileged())
    finally:
        reports.chmod(0o755)
    assert "no bad files" in proc.stdout
    assert error_line(proc) == (
        f"segformer-check-data: error: could not write check-data report {reports}/report.txt: "
        "permission denied (errno 13 EACCES); no earlier report.txt was there (no partial file "
        "left)"
    )
    assert list(reports.iterdir()) == []


def noise_images(folder: Path, count: int) -> Path:
    rng = np.random.default_rng(0)
    for i in range(count):
        write_image(folder / f"{i}.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    return folder


@pytest.mark.slow
def test_two_predicts_into_one_folder_at_once_leave_whole_files(tmp_path: Path) -> None:
    """Two launches of one prediction at once, into one output folder: each claims its own run
    directory, both write every output (each file renamed into place whole, the later one
    kept: a reader never sees half a file), no temporary file is left."""
    ckpt = write_lightning_checkpoint(tmp_path / "model.ckpt", CLASSES)
    images, out = noise_images(tmp_path / "images", 6), tmp_path / "out"
    args = [f"paths.root_dir={tmp_path}", f"ckpt_path={ckpt}", f"input={images}"]
    args += [f"output={out}", "precision=32-true", "device=cpu", "batch_size=2"]
    cmd = [sys.executable, "-m", "segformer.predict", *args]
    launches = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    launches.append(
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    )
    for proc in launches:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert len(list((tmp_path / "logs" / "predict" / "default").iterdir())) == 2
    for i in range(6):
        for name in (f"{i}.png", f"{i}_color.png", f"{i}_overlay.jpg"):
            Image.open(out / name).load()
    assert leftovers(out) == []


def nan_image() -> np.ndarray:
    """A float32 RGB image, NaN (no-data) in two pixels of band 0."""
    image = np.random.default_rng(1).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    image[3, 5, 0] = image[7, 9, 0] = np.nan
    return image


@pytest.mark.slow
def test_predict_skips_a_nan_tiff_naming_it_and_writes_the_others(tmp_path: Path) -> None:
    ckpt = write_lightning_checkpoint(tmp_path / "model.ckpt", CLASSES)
    images, out = noise_images(tmp_path / "images", 2), tmp_path / "out"
    write_image(images / "nodata.tif", nan_image())
    args = [f"paths.root_dir={tmp_path}", f"ckpt_path={ckpt}", f"input={images}"]
    proc = run_command("segformer.predict", [*args, f"output={out}", "precision=32-true"])
    assert error_line(proc).startswith(
        f"segformer-predict: error: 1 of 3 input image(s) unreadable, skipped ({images}/nodata.tif)"
    )
    assert f"image {images}/nodata.tif has 2 non-finite value(s) (2 NaN" in proc.stdout
    assert sorted(p.name for p in out.glob("*.png")) == [
        "0.png",
        "0_color.png",
        "1.png",
        "1_color.png",
    ]
    assert not list(out.glob("nodata*"))


@pytest.mark.slow
def test_eval_on_a_nan_tiff_stops_naming_it_before_writing_metrics(tmp_path: Path) -> None:
    ckpt = write_lightning_checkpoint(tmp_path / "model.ckpt", CLASSES)
    data = make_folder(tmp_path / "data")
    (data / "images" / "val" / "s1.png").unlink()
    write_image(data / "images" / "val" / "s1.tif", nan_image())
    args = [f"paths.root_dir={tmp_path}", f"ckpt_path={ckpt}", *folder_overrides(data)]
    proc = run_command("segformer.eval", [*args, "trainer.precision=32-true"])
    line = error_line(proc)
    assert line.startswith(
        f"segformer-eval: error: image {data}/images/val/s1.tif has 2 non-finite"
    )
    assert not list(tmp_path.glob("logs/eval/*/*/metrics.json"))
