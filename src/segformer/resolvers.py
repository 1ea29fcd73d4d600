"""OmegaConf resolvers the configs use: run directories, batch splits over devices, variants."""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segformer.errors import InputError, MissingFileError, UnwritableFileError


def latest_run_dir(base: str | Path) -> Path | None:
    """The newest run directory under ``base`` that holds ``checkpoints/last.ckpt`` (newest by
    that file's modification time; among runs whose last.ckpt were written within a second of
    each other, the last by name, and a line on stderr says which one and names the others)."""
    runs = sorted(
        ((p.stat().st_mtime, p.parents[1]) for p in Path(base).glob("*/checkpoints/last.ckpt")),
        key=lambda t: (t[0], t[1].name),
    )
    if not runs:
        return None
    newest_time, newest = runs[-1]
    ties = [run for mtime, run in runs[:-1] if newest_time - mtime < _TIE_SECONDS]
    if ties and _is_rank_zero() and (str(base), newest.name) not in _told:
        _told.add((str(base), newest.name))
        others = ", ".join(run.name for run in ties)
        print(
            f"ckpt_path=last: {len(ties) + 1} runs under {base} have a last.ckpt written within "
            f"{_TIE_SECONDS:g} s of each other; resuming {newest.name} (not {others}); to resume "
            f"another, pass ckpt_path=<its run dir>/checkpoints/last.ckpt",
            file=sys.stderr,
            flush=True,
        )
    return newest


_TIE_SECONDS = 1.0
STAMP_FORMAT = "%Y-%m-%d_%H-%M-%S"  # ${now:...} in configs/hydra/default.yaml
_told: set[tuple[str, str]] = set()  # said once per process, however often Hydra resolves

# run directories this process claimed, by (base, stamp): Hydra resolves hydra.run.dir more than
# once in a run (Lightning's DDP launcher reads it again to start the other ranks on it)
_claimed: dict[tuple[str, str], str] = {}


def _env_int(*names: str) -> int | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return None


def _is_rank_zero() -> bool:
    rank = _env_int("RANK", "SLURM_PROCID")
    return rank is None or rank == 0


def _slurm_tag() -> str | None:
    """The SLURM job's id: ``<array job>_<task>`` in a job array, else the job id."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID") or None


def _launch_tag() -> str | None:
    """For one run started as several processes by an outside launcher (``srun`` with several
    tasks, ``torchrun``), a name all its processes share and other launches do not; None for
    a run started as one process (Lightning starts its own DDP processes on rank 0's folder)."""
    world = _env_int("WORLD_SIZE", "SLURM_NTASKS")
    if world is None or world < 2:
        return None
    if _env_int("SLURM_NTASKS") and _env_int("SLURM_PROCID") is not None:
        return _slurm_tag()
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "none")
    if run_id != "none":
        return re.sub(r"[^\w.-]", "", run_id)[:8] or None
    master = f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}"
    if master == ":":
        return None
    return "r" + hashlib.sha1(master.encode()).hexdigest()[:7]


def _second_before(stamp: str) -> list[str]:
    """The run directory timestamp (configs/hydra/default.yaml's format) a second earlier."""
    try:
        then = datetime.datetime.strptime(stamp, STAMP_FORMAT) - datetime.timedelta(seconds=1)
    except ValueError:  # a timestamp format of the user's own
        return []
    return [then.strftime(STAMP_FORMAT)]


def _claim(base: str, stamp: str) -> str:
    """A new run directory ``<base>/<stamp>``, created here and so this launch's alone: when
    another launch already has it (the same run_name in the same second), ``<stamp>_<suffix>``
    with the SLURM job/array task id, else the process id, else a random one. The processes of
    one run started by torchrun or srun share ``<stamp>_<launch tag>``."""
    key = (base, stamp)
    if key in _claimed:
        return _claimed[key]
    tag = _launch_tag()
    if tag is not None:
        # one of several processes of a run (its tag is no other launch's): whichever comes
        # first creates the folder, the others use it; when one read its clock a second
        # earlier (a second boundary between them), its folder is the one there
        names = [f"{stamp}_{tag}", *(f"{s}_{tag}" for s in _second_before(stamp))]
        run = next((f"{base}/{n}" for n in names if Path(base, n).is_dir()), f"{base}/{names[0]}")
        Path(run).mkdir(parents=True, exist_ok=True)
        _claimed[key] = run
        return run
    Path(base).mkdir(parents=True, exist_ok=True)
    slurm = _slurm_tag()
    suffixes = [slurm] if slurm else []
    suffixes += [str(os.getpid())] + [secrets.token_hex(3) for _ in range(8)]
    names = [stamp] + [f"{stamp}_{suffix}" for suffix in suffixes]
    for name in names:
        run = f"{base}/{name}"
        try:
            os.mkdir(run)  # create-exclusive: fails when another launch has it
        except FileExistsError:
            continue
        _claimed[key] = run
        return run
    raise FileExistsError(f"could not create a new run directory under {base} ({names[-1]})")


def _run_dir(base: str, stamp: str, ckpt_path: str | None) -> str:
    # ckpt_path=last continues the newest run of this run_name in place, not in a new directory
    if ckpt_path == "last":
        run = latest_run_dir(base)
        if run is None:
            raise MissingFileError(
                f"ckpt_path=last: no previous run with checkpoints/last.ckpt under {base}"
            )
        return str(run)
    try:
        return _claim(base, stamp)
    except OSError as err:  # a read-only or full disk: no run can start there
        from segformer.checkpoint_io import write_cause

        raise UnwritableFileError(
            f"could not create a run directory under {base}: {write_cause(err)}; set "
            "paths.root_dir=DIR (or paths.log_dir=DIR) to a folder you can write"
        ) from err


def _per_process(global_batch: int, devices: Any, num_nodes: int = 1) -> int:
    # the paper gives global batches (16 for ADE20K, 8 for Cityscapes); split them over processes
    n = len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else devices
    if not isinstance(n, int) or n < 1:
        raise InputError(f"per_device: set trainer.devices to a count, got {devices!r}")
    world = n * int(num_nodes)
    if global_batch % world:
        raise InputError(f"global batch {global_batch} is not divisible by {world} processes")
    return global_batch // world


def batch_split(
    global_batch: int, devices: Any, num_nodes: int = 1, max_per_device: int | None = None
) -> tuple[int, int]:
    """(per-device batch, gradient accumulation) giving ``global_batch`` over the processes:
    the largest per-device batch <= ``max_per_device`` (None: no limit) that divides the
    per-process share, the rest made up by accumulating that many batches per step."""
    share = _per_process(global_batch, devices, num_nodes)
    if max_per_device is None or share <= int(max_per_device):
        return share, 1
    if int(max_per_device) < 1:
        raise InputError(f"max_batch_per_device={max_per_device}; expected >= 1")
    batch = max(b for b in range(1, int(max_per_device) + 1) if share % b == 0)
    return batch, share // batch


def _per_device(
    global_batch: int, devices: Any, num_nodes: int = 1, max_per_device: int | None = None
) -> int:
    return batch_split(global_batch, devices, num_nodes, max_per_device)[0]


def _accumulate(
    global_batch: int, devices: Any, num_nodes: int = 1, max_per_device: int | None = None
) -> int:
    return batch_split(global_batch, devices, num_nodes, max_per_device)[1]


def _variant_field(variant: str, field: str) -> Any:
    # configs read the variant table, e.g. ${variant:${model.variant},imagenet_file}
    from segformer.models.variants import get_variant

    return getattr(get_variant(variant), field)


def register_resolvers() -> None:
    resolvers = {
        "run_dir": _run_dir,
        "per_device": _per_device,
        "accumulate": _accumulate,
        "variant": _variant_field,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
