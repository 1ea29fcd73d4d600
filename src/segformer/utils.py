"""Glue shared by the entry points: config resolvers, run directories, the rich config tree."""

from __future__ import annotations

import builtins
import functools
import os
import sys
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console


def _config_dir() -> str:
    """The packaged configs: ``segformer/configs`` is a copy in an installed wheel and a symlink
    to the repo's top-level ``configs/`` in a checkout (editable installs); a checkout made
    without symlinks (a text file in its place) falls back to ``<repo>/configs``."""
    package = Path(__file__).resolve().parent
    for folder in (package / "configs", package.parents[1] / "configs"):
        if (folder / "train.yaml").is_file():
            return str(folder)
    raise FileNotFoundError(f"no Hydra configs (train.yaml) in {package / 'configs'}")


CONFIG_DIR = _config_dir()

PACKAGE_DIR = Path(__file__).resolve().parent
# what the project raises for bad input (files, configs, checkpoints, data); from elsewhere
# (torch, a bug of ours deeper down) the same types keep their traceback
USER_ERRORS = (OSError, ValueError, FloatingPointError)
Fn = TypeVar("Fn", bound=Callable[..., Any])


def latest_run_dir(base: str | Path) -> Path | None:
    """The newest run directory under ``base`` that holds ``checkpoints/last.ckpt``."""
    runs = sorted(Path(base).glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    return runs[-1].parents[1] if runs else None


def _run_dir(base: str, stamp: str, ckpt_path: str | None) -> str:
    # ckpt_path=last continues the newest run of this run_name in place, not in a new directory
    if ckpt_path == "last":
        run = latest_run_dir(base)
        if run is None:
            raise FileNotFoundError(
                f"ckpt_path=last: no previous run with checkpoints/last.ckpt under {base}"
            )
        return str(run)
    return f"{base}/{stamp}"


def _per_process(global_batch: int, devices: Any, num_nodes: int = 1) -> int:
    # the paper gives global batches (16 for ADE20K, 8 for Cityscapes); split them over processes
    n = len(devices) if isinstance(devices, Sequence) and not isinstance(devices, str) else devices
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"per_device: set trainer.devices to a count, got {devices!r}")
    world = n * int(num_nodes)
    if global_batch % world:
        raise ValueError(f"global batch {global_batch} is not divisible by {world} processes")
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
        raise ValueError(f"max_batch_per_device={max_per_device}; expected >= 1")
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


@rank_zero_only
def print_config(cfg: DictConfig, save_to: Path | None = None, show: bool = True) -> None:
    """Print the resolved config as a rich tree (top-level groups as branches) and save it."""
    tree = rich.tree.Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(f"[bold]{key}")
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark", background_color="default"))
    if show:
        Console().print(tree)
    if save_to is not None:
        save_to.mkdir(parents=True, exist_ok=True)
        (save_to / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        with (save_to / "config_tree.log").open("w") as f:
            Console(file=f, width=120).print(tree)


def instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a named group (callbacks, loggers)."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def instantiate_loggers(cfg: DictConfig | None, run_dir: Path) -> list[Any]:
    """Loggers of ``cfg.logger``. A wandb run without an explicit id gets one stored in the run
    directory (``wandb_id.txt``), so resuming that run directory continues the same wandb run."""
    from hydra.utils import instantiate

    loggers = []
    for c in (cfg or {}).values():
        if not (isinstance(c, DictConfig) and "_target_" in c):
            continue
        kwargs: dict[str, Any] = {}
        if c._target_.endswith("WandbLogger") and c.get("id") is None:
            id_file = run_dir / "wandb_id.txt"
            run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:12]
            run_dir.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id)
            kwargs = {"id": run_id, "resume": "allow"}
        loggers.append(instantiate(c, **kwargs))
    return loggers


def build_module(cfg: DictConfig, datamodule: Any, **overrides: Any) -> Any:
    """The LightningModule of ``cfg.model`` (default SegFormerModule) with the optimizer,
    scheduler and inference groups, and classes and ignore index taken from the data."""
    from hydra.utils import get_class

    from segformer.module import SegFormerModule

    kwargs = OmegaConf.to_container(cfg.get("model") or {}, resolve=True)
    cls = get_class(kwargs.pop("_target_")) if "_target_" in kwargs else SegFormerModule
    for group in ("optimizer", "scheduler", "inference"):
        if cfg.get(group) is not None:
            kwargs[group] = OmegaConf.to_container(cfg[group], resolve=True)
    kwargs.update(
        num_classes=datamodule.num_classes,
        class_names=list(datamodule.class_names),
        ignore_index=datamodule.ignore_index,
    )
    image_format = getattr(datamodule, "image_format", None)
    if image_format is not None:  # how the data reads images: checked, and kept for predict
        if kwargs.get("in_channels", 3) != image_format.in_channels:
            raise ValueError(
                f"model.in_channels={kwargs.get('in_channels', 3)} but data.in_channels="
                f"{image_format.in_channels}: the model must take the bands the data gives"
            )
        kwargs["input_format"] = image_format.to_dict()
    kwargs.update(overrides)
    return cls(**kwargs)


def step_based_trainer_kwargs(trainer_cfg: Any) -> dict[str, Any]:
    """Trainer arguments that keep the configs' "optimizer steps" meaning under gradient
    accumulation: Lightning counts an int ``val_check_interval`` in training batches, so it is
    multiplied by ``accumulate_grad_batches`` (validation, and the checkpoint saved with it,
    then fall on step boundaries, where the resumable sampler's position is exact)."""
    accumulate = int(trainer_cfg.get("accumulate_grad_batches") or 1)
    interval = trainer_cfg.get("val_check_interval")
    if accumulate > 1 and isinstance(interval, int) and not isinstance(interval, bool):
        return {"val_check_interval": interval * accumulate}
    return {}


def finish_wandb() -> None:
    """Close an active wandb run (a no-op without wandb)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


_hydra_full_error_is_ours = False  # hydra_cli set HYDRA_FULL_ERROR, the user did not


def show_tracebacks() -> bool:
    """SEGFORMER_DEBUG=1 or HYDRA_FULL_ERROR=1: every error with its traceback."""
    flags = [os.environ.get("SEGFORMER_DEBUG", "")]
    if not _hydra_full_error_is_ours:
        flags.append(os.environ.get("HYDRA_FULL_ERROR", ""))
    return any(flag not in ("", "0") for flag in flags)


def _embedded_error(text: str) -> tuple[str, str, str] | None:
    """(innermost file, exception type name, message) of a traceback printed into an error
    message: DataLoader workers and spawned processes re-raise errors that way."""
    at = text.rfind('\n  File "')
    if "Traceback (most recent call last)" not in text or at < 0:
        return None
    lines = text[at + 1 :].splitlines()
    body = next((i for i, line in enumerate(lines[1:], 1) if line and line[0] != " "), None)
    if body is None:
        return None
    name, _, message = "\n".join(lines[body:]).partition(": ")
    return lines[0].split('"')[1], name.rsplit(".", 1)[-1], message.strip()


def _ours(file: str) -> bool:
    return Path(file).resolve().is_relative_to(PACKAGE_DIR)


def user_error_message(err: BaseException) -> str | None:
    """The message of an error the project raised about the user's input, else None (a bug or
    an error of a library: its traceback is wanted). User errors: OSError / ValueError /
    FloatingPointError raised in this package (also in a DataLoader worker or a spawned
    process, while Hydra resolves a config value or instantiates a config group), Hydra's own
    override / config errors, and a missing mandatory config value (``???``)."""
    from hydra.errors import CompactHydraException, InstantiationException
    from omegaconf.errors import (
        InterpolationResolutionError,
        MissingMandatoryValue,
        OmegaConfBaseException,
    )

    if isinstance(err, (InstantiationException, OmegaConfBaseException)) and err.__cause__:
        return user_error_message(err.__cause__)  # raised by our constructor or resolver
    if isinstance(err, InterpolationResolutionError):  # OmegaConf drops the cause (OC_CAUSE)
        name, found, message = str(err).partition(" raised while resolving interpolation: ")
        if found and _user_kind(name) and _raised_here(err):  # by a resolver of ours
            return message.split("\n    full_key:")[0]
        return None
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", None) or "a key"
        return f"{key} has no value (??? in the config); set {key}=... on the command line"
    if isinstance(err, CompactHydraException):  # a bad override, an unknown option: as Hydra
        cause = err.__cause__
        return str(err) + (f"\n{cause}" if isinstance(cause, OmegaConfBaseException) else "")
    embedded = _embedded_error(str(err))
    if embedded is not None:
        file, name, message = embedded
        return message if _user_kind(name) and _ours(file) else None
    if isinstance(err, USER_ERRORS) and _raised_here(err):
        return str(err)
    return None


def _user_kind(name: str) -> bool:
    """Whether the built-in exception type called ``name`` is one of USER_ERRORS."""
    kind = getattr(builtins, name, None)
    return isinstance(kind, type) and issubclass(kind, USER_ERRORS)


def _raised_here(err: BaseException) -> bool:
    """Whether the innermost frame of ``err``'s traceback (where it was raised) is ours."""
    tb, file = err.__traceback__, None
    while tb is not None:
        file, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    return file is not None and _ours(file)


def _exit_on_user_error(command: str, err: Exception) -> None:
    """Print a user error as one line and exit 1; return (the caller re-raises) otherwise."""
    message = user_error_message(err)
    if message is not None:
        print(f"segformer-{command}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


def hydra_cli(command: str, config_name: str) -> Callable[[Fn], Fn]:
    """``@hydra.main`` with ``configs/<config_name>.yaml`` for the console script
    ``segformer-<command>``: a user error (``user_error_message``) prints one line
    ``segformer-<command>: error: <message>`` to stderr and exits with status 1, without a
    traceback; any other error keeps its full traceback. SEGFORMER_DEBUG=1 (or
    HYDRA_FULL_ERROR=1) shows the traceback of every error.

    Two layers: around the job itself, so Hydra never reports the error (it would add its "Error
    executing job" line), and around Hydra, for errors raised while it composes the config
    (e.g. ``ckpt_path=last`` without a previous run, found by the run_dir resolver): with
    HYDRA_FULL_ERROR set for the call, Hydra re-raises those rather than printing a traceback."""
    import hydra

    def decorate(task: Fn) -> Fn:
        @functools.wraps(task)
        def job(cfg: Any) -> Any:
            try:
                return task(cfg)
            except Exception as err:
                if not show_tracebacks():
                    _exit_on_user_error(command, err)
                raise

        hydra_main = hydra.main(
            version_base="1.3", config_path=CONFIG_DIR, config_name=config_name
        )(job)

        @functools.wraps(hydra_main)
        def main(*args: Any, **kwargs: Any) -> Any:
            global _hydra_full_error_is_ours
            if show_tracebacks():  # and Hydra's in full, not trimmed
                os.environ.setdefault("HYDRA_FULL_ERROR", "1")
                return hydra_main(*args, **kwargs)
            os.environ["HYDRA_FULL_ERROR"], _hydra_full_error_is_ours = "1", True
            try:
                return hydra_main(*args, **kwargs)
            except Exception as err:
                _exit_on_user_error(command, err)
                raise
            finally:
                os.environ.pop("HYDRA_FULL_ERROR", None)
                _hydra_full_error_is_ours = False

        return main  # type: ignore[return-value]

    return decorate
