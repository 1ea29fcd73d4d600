"""Run directories: each launch claims its own (create-exclusive), even two of one run_name in
the same second; DDP ranks share their run's; ckpt_path=last finds the newest run and says
which one when several are equally new."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY

import segformer.resolvers as resolvers
from segformer.resolvers import _run_dir, latest_run_dir

STAMP = "2000-01-01_00-00-00"
# every launch resolves the run directory with this timestamp: two launches "in the same second"
SAME_SECOND = (
    "hydra.run.dir='${run_dir:${paths.log_dir}/${task_name}/${run_name},"
    + STAMP
    + ",${oc.select:ckpt_path,null}}'"
)
LAUNCH_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_PROCID",
    "SLURM_NTASKS",
)


@pytest.fixture(autouse=True)
def _fresh_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each call of the resolver here stands for another launch (another process)."""
    monkeypatch.setattr(resolvers, "_claimed", {})
    monkeypatch.setattr(resolvers, "_told", set())
    for name in LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)


def launch(base: Path, stamp: str = STAMP) -> Path:
    resolvers._claimed.clear()  # a new process
    return Path(_run_dir(str(base), stamp, None))


def test_same_second_launches_get_separate_directories(tmp_path: Path) -> None:
    base = tmp_path / "logs" / "train" / "synthetic_b0"
    first, second, third = launch(base), launch(base), launch(base)
    assert first == base / STAMP and first.is_dir()
    assert second == base / f"{STAMP}_{os.getpid()}" and second.is_dir()
    assert third.parent == base and len(third.name) == len(STAMP) + 7  # a random suffix
    assert len({first, second, third}) == 3


def test_one_launch_resolving_twice_keeps_its_directory(tmp_path: Path) -> None:
    # Lightning's DDP launcher reads hydra.run.dir again in rank 0 to start the other ranks
    base = tmp_path / "runs"
    run = _run_dir(str(base), STAMP, None)
    assert _run_dir(str(base), STAMP, None) == run
    assert [p.name for p in base.iterdir()] == [STAMP]


def test_a_slurm_job_array_task_takes_its_task_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "1001")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "1000")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert launch(tmp_path) == tmp_path / STAMP
    assert launch(tmp_path) == tmp_path / f"{STAMP}_1000_3"


@pytest.mark.parametrize(
    "env",
    [
        {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "WORLD_SIZE": "2"},  # srun, 2 tasks
        {"TORCHELASTIC_RUN_ID": "none", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"},
    ],
    ids=["srun", "torchrun"],
)
@pytest.mark.parametrize("order", [("0", "1"), ("1", "0")], ids=["rank0-first", "rank1-first"])
def test_ranks_of_one_outside_launched_run_share_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], order: tuple[str, str]
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("WORLD_SIZE", "2")
    dirs = []
    for rank, stamp in zip(order, (STAMP, "2000-01-01_00-00-01"), strict=True):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("SLURM_PROCID", rank) if "SLURM_JOB_ID" in env else None
        dirs.append(launch(tmp_path, stamp))
    assert dirs[0] == dirs[1]  # the second a second later on its clock: still the same folder
    assert [p.name for p in tmp_path.iterdir()] == [dirs[0].name]
    assert dirs[0].name.startswith(f"{STAMP}_")


def _finished_run(base: Path, name: str, mtime: float) -> Path:
    ckpt = base / name / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (mtime, mtime))
    return ckpt.parents[1]


def test_ckpt_path_last_takes_the_newest_and_names_equally_new_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _finished_run(tmp_path, STAMP, 1_000_000.0)  # an older run
    mine = _finished_run(tmp_path, f"{STAMP}_1234", 1_000_100.0)
    assert latest_run_dir(tmp_path) == mine
    assert capsys.readouterr().err == ""  # one newest: nothing to say
    other = _finished_run(tmp_path, f"{STAMP}_999", 1_000_100.4)
    assert latest_run_dir(tmp_path) == other  # newest by last.ckpt's time
    err = capsys.readouterr().err
    assert f"2 runs under {tmp_path} " in err  # not the old one
    assert f"resuming {other.name} (not {mine.name})" in err
    assert "ckpt_path=" in err and len(err.strip().splitlines()) == 1
    # the same time to the nanosecond: the last by name, and said once per process
    os.utime(mine / "checkpoints" / "last.ckpt", ns=(1, 1_000_100_400_000_000))
    os.utime(other / "checkpoints" / "last.ckpt", ns=(1, 1_000_100_400_000_000))
    assert latest_run_dir(tmp_path) == other
    assert latest_run_dir(tmp_path) == other
    assert capsys.readouterr().err.count("resuming") <= 1


def test_resume_reuses_the_newest_directory_and_claims_none(tmp_path: Path) -> None:
    run = _finished_run(tmp_path, STAMP, 1_000_000.0)
    assert Path(_run_dir(str(tmp_path), "2000-01-02_00-00-00", "last")) == run
    assert [p.name for p in tmp_path.iterdir()] == [STAMP]


def _train_cmd(root: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "segformer.train",
        f"paths.root_dir={root}",
        *TINY,
        "callbacks.prediction_grid=null",
        *overrides,
    ]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    return {**env, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_two_launches_of_one_run_name_started_together_keep_their_own_runs(
    tmp_path: Path,
) -> None:
    # two different learning rates, so each run's files can be told apart
    procs = [
        subprocess.Popen(
            _train_cmd(tmp_path, SAME_SECOND, f"optimizer.lr={lr}", "trainer.max_steps=3"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        for lr in ("1e-3", "2e-3")
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    base = tmp_path / "logs" / "train" / "synthetic_b0"
    runs = sorted(base.iterdir())
    assert len(runs) == 2 and runs[0].name == STAMP and runs[1].name.startswith(f"{STAMP}_")
    lrs = set()
    for run in runs:
        ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == 3
        lr = ckpt["hyper_parameters"]["optimizer"]["lr"]
        config = (run / "config.yaml").read_text()
        assert f"lr: {lr}" in config  # the config beside the checkpoint is the same run's
        metrics = json.loads((run / "metrics.json").read_text())
        assert "val/mIoU" in metrics
        lrs.add(lr)
        out = next(o for o in outputs if f"run dir {run} |" in o)  # each run reports its own
        assert f"checkpoint {run / 'checkpoints' / 'last.ckpt'}" in out
    assert lrs == {1e-3, 2e-3}


@pytest.mark.slow
def test_lightning_ddp_ranks_use_one_run_directory(tmp_path: Path) -> None:
    # strategy=ddp: Lightning starts rank 1 as `python -m segformer.train ... hydra.run.dir=...`
    # with rank 0's folder
    cmd = _train_cmd(
        tmp_path,
        "trainer=ddp_cpu",
        "trainer.strategy=ddp",
        "data.batch_size=2",
    )
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "train" / "synthetic_b0").iterdir()
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.json").is_file()
