"""Checkpoint (and other output) writes that a kill or a failing disk cannot corrupt: written to
a temporary file beside the target and renamed over it, so the previous version stays whole; a
failed write (no space left, quota, permission, file-size limit) removes the temporary file and
raises one ``UnwritableFileError`` naming the file, the cause and what was kept. Plain Python
and torch: the commands that only read and write files (predict, export) start
without importing Lightning; its checkpoint plugin is ``atomic_checkpoint.py``."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator, Mapping
from io import BytesIO
from pathlib import Path

from PIL import Image

from segformer.errors import UnwritableFileError

_CAUSES = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file size limit exceeded (ulimit -f, or the largest file the filesystem holds)",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
}


def write_cause(err: OSError) -> str:
    """An OSError of a write in words: ``no space left on the device (errno 28 ENOSPC)``."""
    code = err.errno
    if code is None:
        return str(err)
    words = _CAUSES.get(code) or err.strerror or os.strerror(code)
    return f"{words} (errno {code} {errno.errorcode.get(code, '?')})"


def write_failed(
    path: str | os.PathLike, err: OSError, what: str = "", kept: str | None = None
) -> UnwritableFileError:
    """The one-line error of a failed write of ``path``; ``kept`` says what survived (default:
    the previous version of the file, or that there was none). The error's ``errno`` is
    ``err``'s, its ``path`` the file."""
    path = Path(path)
    if kept is None:
        kept = (
            f"the previous {path.name} is intact"
            if path.is_file()
            else f"no earlier {path.name} was there"
        )
    error = UnwritableFileError(
        f"could not write {what + ' ' if what else ''}{path}: {write_cause(err)}; {kept} "
        "(no partial file left)"
    )
    error.errno, error.path = err.errno, path  # not .filename: str(error) would change
    return error


def temporary_beside(path: Path) -> Path:
    """The temporary file an atomic write of ``path`` goes to before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, what: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write the output to (for writers that take a file
    name, e.g. ONNX export); renamed over ``path`` when the block ends without an error. An
    OSError in the block or the rename becomes ``write_failed``'s one line; whatever was
    written is removed, and the previous ``path`` stays as it was."""
    path = Path(path)
    tmp = temporary_beside(path)
    try:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            if isinstance(err, UnwritableFileError):
                raise
            raise write_failed(path, err, what) from err
    finally:
        tmp.unlink(missing_ok=True)


def atomic_files(files: Mapping[str | os.PathLike, str | bytes], what: str = "") -> None:
    """Write several files all or nothing: each (text as UTF-8, or bytes) to a temporary file
    beside it, fsynced; once every one is written, each is renamed over its target (a rename
    does not run out of space). A failed write (an OSError) removes the temporary files, leaves
    every target as it was and raises ``write_failed``'s one line naming the file. For a
    prediction's images, a transformers folder's config and weights.

    Encoded bytes rather than an encoder writing into the file: Pillow's encoders write to the
    file descriptor and take a short write (a file-size limit or a disk filling up) for a
    complete one, leaving a truncated file behind no error; Python's file object retries it and
    raises."""
    staged: list[tuple[Path, Path]] = []
    path = None
    try:
        for target, data in files.items():
            path = Path(target)
            tmp = temporary_beside(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            staged.append((path, tmp))
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        for path, tmp in staged:
            os.replace(tmp, path)
    except OSError as err:
        if isinstance(err, UnwritableFileError) or path is None:
            raise
        raise write_failed(path, err, what) from err
    finally:
        for _, tmp in staged:
            tmp.unlink(missing_ok=True)


def image_bytes(image: Image.Image, path: str | os.PathLike) -> bytes:
    """``image`` encoded in the format of ``path``'s suffix (.png, .jpg, ...), for
    ``atomic_files`` (see there why not straight into the file)."""
    buffer = BytesIO()
    image.save(buffer, format=Image.registered_extensions()[Path(path).suffix.lower()])
    return buffer.getvalue()


def atomic_write(path: str | os.PathLike, data: str | bytes, what: str = "") -> None:
    """Write ``data`` to ``path`` all or nothing (``atomic_files`` of one file): for
    metrics.json, run_plan.json, configs, classes.json."""
    atomic_files({path: data}, what)
