"""`pip install .` (not editable) gives console scripts that find their configs: build the wheel
from a copy of the checkout, install it into a fresh venv (dependencies borrowed from this
interpreter through a .pth file, so nothing is downloaded) and run the commands from a folder
outside the repository, with a config folder of the user's own on Hydra's search path."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO_ROOT

USER_DATA_CONFIG = """\
# a user's own data config, on top of the packaged synthetic one
defaults:
  - synthetic
  - _self_
image_size: 32
num_train: 8
num_val: 4
batch_size: 4
val_batch_size: 4
num_workers: 0
"""


def copy_checkout(dest: Path) -> None:
    """The files git would commit (tracked + untracked, not ignored), symlinks kept as links, so
    no stale build/ or egg-info of the working tree leaks into the wheel."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"],
            cwd=REPO_ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout to know which files belong to the source tree")
    for rel in filter(None, listed.split("\0")):
        src, dst = REPO_ROOT / rel, dest / rel
        if not (src.exists() or src.is_symlink()):  # deleted in the working tree
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SEGFORMER_ROOT")}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.mark.slow
def test_wheel_install_runs_from_anywhere(tmp_path: Path) -> None:
    pytest.importorskip("setuptools", reason="builds the wheel without network (no isolation)")
    source, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    copy_checkout(source)
    assert (source / "src" / "segformer" / "configs").is_symlink()
    pip = [sys.executable, "-m", "pip"]
    run(
        [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", f"{dist}", f"{source}"],
        tmp_path,
    )
    (wheel,) = dist.glob("segformer_lightning-*.whl")

    # every YAML of configs/ is in the wheel as segformer/configs/..., personal local/ ones not
    packaged = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".yaml")}
    configs = REPO_ROOT / "configs"
    expected = {
        f"segformer/configs/{p.relative_to(configs).as_posix()}"
        for p in configs.rglob("*.yaml")
        if p.relative_to(configs).parts[0] != "local"
    }
    assert packaged == expected and "segformer/configs/train.yaml" in packaged

    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    get_purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(run([str(python), "-c", get_purelib], tmp_path).stdout.strip())
    # torch, lightning, hydra ... from this interpreter, after the venv's own site-packages
    (purelib / "_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([*pip, "--python", str(python), "install", "-q", "--no-deps", str(wheel)], tmp_path)

    work.mkdir()
    where = run(
        [str(python), "-c", "import segformer.cli as u; print(u.__file__); print(u.CONFIG_DIR)"],
        cwd=work,
    ).stdout.split()
    assert where == [
        str(purelib / "segformer" / "cli.py"),
        str(purelib / "segformer" / "configs"),
    ]

    info = run([str(venv / "bin" / "segformer-info"), "variant=b0", "size=64x64"], cwd=work)
    assert "SegFormer-B0 at 64x64" in info.stdout

    mine = tmp_path / "my_configs"
    (mine / "data").mkdir(parents=True)
    (mine / "data" / "tiny_synthetic.yaml").write_text(USER_DATA_CONFIG)
    train = [
        str(venv / "bin" / "segformer-train"),
        "debug=fdr",
        "logger=csv",  # debug/default.yaml drops the loggers, which the LR monitor needs
        f"hydra.searchpath=[file://{mine}]",
        "data=tiny_synthetic",
        f"paths.log_dir={work / 'logs'}",
        "print_config=false",
        "trainer.enable_model_summary=false",
    ]
    run(train, cwd=work)
    # no experiment: the run is named after the user's data
    (run_dir,) = (work / "logs" / "debug" / "tiny_synthetic_b0").iterdir()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    config = (run_dir / "config.yaml").read_text()
    assert "image_size: 32" in config and "num_train: 8" in config  # the user's data config
