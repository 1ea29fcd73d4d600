"""Nothing waits forever: a hung test fails at its pytest-timeout, and a DDP collective whose peer
never comes fails every process after the strategy's timeout."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import lightning as L
import pytest
from helpers import REPO_ROOT, compose_config, compose_train, with_callback
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy

from segformer.sync_batchnorm import SyncBatchNormPlugin
from segformer.train import train

HUNG = """
import threading


def test_hangs():
    threading.Event().wait()  # nothing ever sets it


def test_after_it():
    pass
"""


def test_the_suite_runs_under_a_per_test_timeout(pytestconfig: pytest.Config) -> None:
    assert float(pytestconfig.getini("timeout")) >= 600  # generous: the slowest tests take ~5 min
    assert pytestconfig.getini("timeout_method") == "signal"


@pytest.mark.slow
def test_a_hung_test_fails_at_its_timeout_and_the_session_goes_on(tmp_path: Path) -> None:
    """pytest with this project's settings (pyproject.toml) on a test that waits forever, with
    the timeout lowered to 2 s: it fails as a Timeout within seconds, the next test still runs."""
    (tmp_path / "test_hung.py").write_text(HUNG)
    cmd = [sys.executable, "-m", "pytest", "-c", str(REPO_ROOT / "pyproject.toml")]
    cmd += ["--rootdir", str(tmp_path), "-p", "no:cacheprovider", "--timeout=2"]
    start = time.monotonic()
    proc = subprocess.run(
        [*cmd, str(tmp_path / "test_hung.py")], capture_output=True, text=True, timeout=300
    )
    seconds = time.monotonic() - start
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "timeout: 2.0s" in proc.stdout and "timeout method: signal" in proc.stdout
    assert "Failed: Timeout (>2.0s) from pytest-timeout" in proc.stdout, proc.stdout[-3000:]
    assert "1 failed, 1 passed" in proc.stdout
    assert seconds < 60, seconds


@pytest.mark.parametrize(("trainer", "minutes"), [("ddp", 30), ("ddp_cpu", 10)])
def test_ddp_configs_set_a_collective_timeout(tmp_path: Path, trainer: str, minutes: int) -> None:
    cfg = compose_config("train", [f"trainer={trainer}"], tmp_path)
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, DDPStrategy)
    assert strategy._timeout == timedelta(minutes=minutes)  # what init_process_group gets
    assert cfg.trainer.sync_batchnorm is True
    if trainer == "ddp_cpu":  # on this machine the whole trainer can be built
        built: L.Trainer = instantiate(cfg.trainer, precision="32-true")  # train.py fixes it
        assert built.strategy._timeout == timedelta(minutes=minutes)
        assert built.strategy._start_method == "spawn"
        layer_sync = built.strategy._layer_sync
        assert isinstance(layer_sync, SyncBatchNormPlugin) and layer_sync.enabled


class StallRankOne(L.Callback):
    """Rank 1 never reaches its first training step's collectives (it sleeps past the test)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_rank == 1:
            time.sleep(300)


@pytest.mark.slow
def test_a_collective_without_its_peer_fails_after_the_timeout(tmp_path, monkeypatch) -> None:
    """trainer=ddp_cpu with a 3 s timeout, rank 1 stalled before its first step: rank 0's
    broadcast of the first step fails with gloo's timeout (which ends the run) instead of
    waiting forever."""
    with_callback(monkeypatch, StallRankOne())
    overrides = ["trainer=ddp_cpu", "data.batch_size=2", "callbacks.prediction_grid=null"]
    cfg = compose_train(tmp_path, [*overrides, "trainer.strategy.timeout.minutes=0.05"])
    start = time.monotonic()
    with pytest.raises(Exception, match=r"(?i)timeout|timed out") as failure:
        train(cfg)
    seconds = time.monotonic() - start
    assert seconds < 120, (seconds, textwrap.shorten(str(failure.value), 500))
