"""The command-line layer of every entry point: packaged configs, ``@hydra_cli``, one-line user
errors, the resolved config printed as a rich tree."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from io import StringIO
from pathlib import Path
from typing import Any, TypeVar

import rich.syntax
import rich.tree
from lightning_utilities.core.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from segformer import errors
from segformer.allocator import keep_freed_memory
from segformer.checkpoint_io import atomic_write


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

Fn = TypeVar("Fn", bound=Callable[..., Any])


def print_config(cfg: DictConfig, save_to: Path | None = None, show: bool = True) -> None:
    """Print the resolved config as a rich tree (top-level groups as branches) and save it; on
    the first process only."""
    # Lightning sets the rank when imported (from the launcher's environment) and in its
    # Trainer; the commands that never import Lightning (predict, export) run alone
    if getattr(rank_zero_only, "rank", 0) != 0:
        return
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
        atomic_write(save_to / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True), "config")
        text = StringIO()
        Console(file=text, width=120).print(tree)
        atomic_write(save_to / "config_tree.log", text.getvalue(), "config")


_hydra_full_error_is_ours = False  # hydra_cli set HYDRA_FULL_ERROR, the user did not


def show_tracebacks() -> bool:
    """SEGFORMER_DEBUG=1 or HYDRA_FULL_ERROR=1: every error with its traceback."""
    flags = [os.environ.get("SEGFORMER_DEBUG", "")]
    if not _hydra_full_error_is_ours:
        flags.append(os.environ.get("HYDRA_FULL_ERROR", ""))
    return any(flag not in ("", "0") for flag in flags)


def _embedded_error(text: str) -> tuple[str, str] | None:
    """(exception type name, message) of the innermost error of a traceback printed into an
    error message: DataLoader workers and spawned processes re-raise errors that way."""
    at = text.rfind('\n  File "')
    if "Traceback (most recent call last)" not in text or at < 0:
        return None
    lines = text[at + 1 :].splitlines()
    body = next((i for i, line in enumerate(lines[1:], 1) if line and line[0] != " "), None)
    if body is None:
        return None
    name, _, message = "\n".join(lines[body:]).partition(": ")
    return name.rsplit(".", 1)[-1], message.strip()


def _user_kind(name: str) -> bool:
    """Whether ``name`` is one of the project's user-error types (``segformer.errors``)."""
    kind = getattr(errors, name, None)
    return isinstance(kind, type) and issubclass(kind, errors.UserError)


def user_error_message(err: BaseException) -> str | None:
    """The message of a user's mistake, else None (a bug, here, in a library or in a user's
    own code: its traceback is wanted). User errors are those of a ``segformer.errors`` type,
    wherever they were raised (also in a DataLoader worker or a spawned process, while Hydra
    resolves a config value or instantiates a config group), Hydra's own override / config
    errors, and a missing mandatory config value (``???``)."""
    from hydra.errors import CompactHydraException, InstantiationException
    from omegaconf.errors import (
        InterpolationResolutionError,
        MissingMandatoryValue,
        OmegaConfBaseException,
    )

    if isinstance(err, (InstantiationException, OmegaConfBaseException)) and err.__cause__:
        return user_error_message(err.__cause__)  # raised by a constructor or a resolver
    if isinstance(err, InterpolationResolutionError):  # OmegaConf drops the cause (OC_CAUSE)
        name, found, message = str(err).partition(" raised while resolving interpolation: ")
        if found and _user_kind(name):  # by a resolver of ours
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
        name, message = embedded
        return message if _user_kind(name) else None
    if isinstance(err, errors.UserError):
        return str(err)
    return None


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
            keep_freed_memory()  # before the first large tensor (allocator.py says why)
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
