"""Checkpoint writes survive a crash or a kill in the middle of saving."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import segformer.atomic_checkpoint as atomic_checkpoint
from segformer.atomic_checkpoint import AtomicCheckpointIO


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"step": torch.tensor(1), "w": torch.ones(1000)}, path)

    def crash(obj, f):  # half a checkpoint, then the process fails (disk full, OOM, ...)
        f.write(b"PK\x03\x04 half written")
        raise OSError("No space left on device")

    monkeypatch.setattr(atomic_checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"step": torch.tensor(2), "w": torch.zeros(1000)}, path)
    assert int(torch.load(path, weights_only=True)["step"]) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


SAVE_LOOP = """
import sys, torch
from segformer.atomic_checkpoint import AtomicCheckpointIO
io, step = AtomicCheckpointIO(), 0
while True:
    step += 1
    state = {"step": torch.tensor(step), "w": torch.full((4_000_000,), step)}
    io.save_checkpoint(state, sys.argv[1])
    print(step, flush=True)
"""


@pytest.mark.slow
def test_sigkill_while_saving_never_leaves_a_corrupt_checkpoint(tmp_path: Path) -> None:
    """A process rewriting a 16 MB last.ckpt in a loop is killed at 5 moments; each time the
    file loads and is one whole checkpoint (its tensor all equal to its step)."""
    path = tmp_path / "last.ckpt"
    for delay in (0.3, 0.45, 0.6, 0.75, 0.9):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_LOOP, str(path)], stdout=subprocess.PIPE, text=True
        )
        proc.stdout.readline()  # one checkpoint written
        time.sleep(delay)  # then die somewhere inside a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = torch.load(path, weights_only=True)
        assert (state["w"] == state["step"]).all()
