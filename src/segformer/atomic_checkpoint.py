"""Lightning's checkpoint writer, made atomic: ``last.ckpt`` is written to a temporary file,
fsynced and renamed over the old one (see ``checkpoint_io``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from segformer.checkpoint_io import temporary_beside, write_failed
from segformer.errors import UnwritableFileError


class _RecordingWriter:
    """A binary file that remembers the first OSError of a write: torch.save reports one as
    ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos ...``."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.error = f, None

    def write(self, data: Any) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write to a temporary file beside the target, fsync, then rename over it: a process killed
    while saving leaves the previous ``last.ckpt`` whole (a rename is atomic on POSIX and
    Windows filesystems). A write that fails (disk full, quota, permission, file-size limit)
    removes the temporary file and raises ``UnwritableFileError`` naming the file and the cause.
    Remote paths (``s3://``...) go through Lightning's writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options}"
            )
        path = Path(path)
        tmp = temporary_beside(path)
        writer = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                writer = _RecordingWriter(f)
                torch.save(checkpoint, writer)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except (OSError, RuntimeError) as err:
            cause = err if isinstance(err, OSError) else writer and writer.error
            if not isinstance(cause, OSError) and isinstance(err.__context__, OSError):
                cause = err.__context__  # closing the file failed too
            if not isinstance(cause, OSError) or isinstance(cause, UnwritableFileError):
                raise
            raise write_failed(path, cause, "checkpoint") from err
        finally:
            tmp.unlink(missing_ok=True)
        return None
