"""Writes that fail (file-size limit, read-only folder): one line naming the file and the cause,
the previous file intact and loadable, no partial file left. Each failure happens in a child
process: RLIMIT_FSIZE (with SIGXFSZ ignored, so the write gets EFBIG) or, when the suite runs as
root (who may write anywhere), a child that drops to an unprivileged user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import TINY

from segformer.checkpoint_io import AtomicCheckpointIO, atomic_write

# the child's preamble: a file-size limit of LIMIT bytes, or an unprivileged user
LIMIT_FSIZE = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a killed process
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
"""


def as_unprivileged() -> list[str]:
    """A command prefix under which permissions apply: root writes into read-only folders
    unless the child runs without the capability to override them."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: a read-only folder is writable")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner"]


def run_child(preamble: str, body: str, prefix: list[str] | None = None):
    code = textwrap.dedent(preamble) + textwrap.dedent(body)
    cmd = [*(prefix or []), sys.executable, "-c", code]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def small_checkpoint() -> dict:
    return {"global_step": 2, "state_dict": {"w": torch.zeros(4)}}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


SAVE_BIG = """
import torch
from segformer.checkpoint_io import AtomicCheckpointIO
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
    cmd = [
        sys.executable,
        "-m",
        "segformer.train",
        f"paths.root_dir={tmp_path}",
        *TINY,
        "callbacks.prediction_grid=null",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "synthetic_b0").iterdir()
    last = run / "checkpoints" / "last.ckpt"
    size = last.stat().st_size  # the resumed run's logs stay far below half of it
    resume = ["ckpt_path=last", "trainer.max_steps=4"]
    code = LIMIT_FSIZE.format(limit=size // 2) + textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = {["segformer.train", *cmd[3:], *resume]!r}
        runpy.run_module("segformer.train", run_name="__main__")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"segformer-train: error: could not write checkpoint {last}: "), (
        proc.stderr[-3000:]
    )
    assert "file size limit" in line and "the previous last.ckpt is intact" in line
    assert "Traceback" not in proc.stderr
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
    args = [f"ckpt_path={weights}", f"output={output}", "height=64", "width=64"]
    code = LIMIT_FSIZE.format(limit=1_000_000) + textwrap.dedent(
        f"""
        import runpy, sys
        sys.argv = {["segformer.export", f"paths.root_dir={tmp_path}", *args]!r}
        runpy.run_module("segformer.export", run_name="__main__")
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"segformer-export: error: could not write ONNX model {output}: ")
    assert "file size limit" in line and "the previous model.onnx is intact" in line
    assert output.read_bytes() == b"the previous export" and leftovers(output.parent) == []
