"""Hugging Face Hub repo ids wherever a checkpoint path is accepted.

``resolve_checkpoint("nvidia/segformer-b0-finetuned-ade-512-512")`` downloads (or finds in the
cache) the files a checkpoint needs and returns the local path that ``read_checkpoint`` then
reads like any other. A string is a repo id only when it is not an existing local path and has
the shape ``owner/name`` (optionally ``owner/name@revision``), so a missing local file such as
``pretrained/mit_b0.pth`` still fails as a missing file.

``huggingface_hub`` is imported only here, lazily: the rest of the package works without it.
The cache (``HF_HUB_CACHE``, ``HF_HOME``) and ``HF_HUB_OFFLINE`` are read from the environment
at each call, so they can change after ``huggingface_hub`` was imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from segformer.errors import InputError, MissingFileError

# transformers layout first; then a single weights file of another format
TRANSFORMERS_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
# Hub naming rules: letters, digits, "-", "_", "." (no leading/trailing "-" or ".", no "--"/"..")
_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?P<repo>{_NAME}/{_NAME})(?:@(?P<revision>[^\s@]+))?")
_TRUE = {"1", "on", "yes", "true"}


def parse_hub_id(path: str | Path) -> tuple[str, str | None] | None:
    """(repo_id, revision or None) when ``path`` is shaped like a Hub repo id, else None.

    Local-looking strings are never repo ids: an existing path, one with a file suffix of
    weights (``weights/mit_b0.pth``), more than one ``/``, a leading ``.``/``~``/``/``.
    """
    text = str(path)
    if os.path.exists(text):
        return None
    m = _REPO_ID.fullmatch(text)
    if m is None or "--" in m["repo"] or ".." in m["repo"]:
        return None
    if m["repo"].lower().endswith((*WEIGHT_SUFFIXES, ".json", ".onnx")):
        return None
    return m["repo"], m["revision"]


def hub_cache_dir() -> Path:
    """The Hub cache as huggingface_hub resolves it, read from the environment now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HUGGINGFACE_HUB_CACHE"):  # the older name, still honoured by the hub
        return Path(os.environ["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface"
    )
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def resolve_checkpoint(path: str | Path, revision: str | None = None) -> Path:
    """A local checkpoint path for ``path``: itself, or the Hub snapshot of a repo id.

    A revision comes from ``owner/name@revision`` or the ``revision`` argument (both: they must
    agree). Raises FileNotFoundError naming what to download and where to put it when the repo
    is not cached and downloading is impossible (offline, or huggingface_hub missing).
    """
    parsed = parse_hub_id(path)
    if parsed is None:
        if revision is not None:
            raise InputError(f"{path}: revision={revision!r} is given but this is a local path")
        return Path(path).expanduser()
    repo_id, at_revision = parsed
    if at_revision and revision and at_revision != revision:
        raise InputError(f"{path}: revision {at_revision!r} in the id but revision={revision!r}")
    revision = at_revision or revision
    folder = _snapshot(repo_id, revision)
    return _checkpoint_in(folder, f"{repo_id}@{revision or 'main'}")


def _download_hint(repo_id: str, revision: str | None, cache: Path) -> str:
    rev = f" --revision {revision}" if revision else ""
    folder = "models--" + repo_id.replace("/", "--")
    return (
        f"On a machine with network run `hf download {repo_id}{rev} config.json "
        "model.safetensors` (pytorch_model.bin where the repo has no safetensors; older "
        f"huggingface_hub: `huggingface-cli download`), then copy the cache folder {folder} "
        f"it made (under ~/.cache/huggingface/hub) to {cache / folder}, or point HF_HUB_CACHE "
        "at a copied cache; or put config.json and the weights (or any single checkpoint "
        "file) into a local folder and pass that folder's path instead"
    )


def _snapshot(repo_id: str, revision: str | None) -> Path:
    """The snapshot folder of ``repo_id`` with the needed files, downloading when allowed."""
    cache, offline = hub_cache_dir(), hub_offline()
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise MissingFileError(
            f"{repo_id}: not a local file or folder, and huggingface_hub is not installed to "
            "fetch it as a Hugging Face Hub repo id (pip install huggingface_hub, or the "
            f"'hf' extra). {_download_hint(repo_id, revision, cache)}"
        ) from None

    def fetch(patterns: list[str]) -> Path:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache,
                local_files_only=offline,
                allow_patterns=patterns,
            )
        )

    try:
        folder = fetch(["config.json", "*.safetensors"])
        if not any(folder.glob("*.safetensors")):  # older repos: .bin; other formats: .pth ...
            folder = fetch([f"*{s}" for s in WEIGHT_SUFFIXES if s != ".safetensors"])
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub cannot be reached"
        raise MissingFileError(
            f"{repo_id}{'@' + revision if revision else ''}: not a local file or folder, and as "
            f"a Hugging Face Hub repo id it is not in the cache {cache} while {why}. "
            f"{_download_hint(repo_id, revision, cache)}"
        ) from None
    except RepositoryNotFoundError:
        raise MissingFileError(
            f"{repo_id}: not a local file or folder, and no such repo on the Hugging Face Hub "
            "(or a private/gated one: log in with `hf auth login` or set HF_TOKEN)"
        ) from None
    return folder


def _checkpoint_in(folder: Path, what: str) -> Path:
    """The folder itself (transformers layout) or its single weights file."""
    weights = [folder / name for name in TRANSFORMERS_FILES]
    if (folder / "config.json").is_file() and any(p.is_file() for p in weights):
        return folder
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if len(files) == 1:
        return files[0]
    found = ", ".join(str(p.relative_to(folder)) for p in files) or "none"
    raise MissingFileError(
        f"{what} ({folder}): expected config.json with {' or '.join(TRANSFORMERS_FILES)} "
        f"(transformers layout) or a single weights file ({', '.join(WEIGHT_SUFFIXES)}); "
        f"weights files found: {found}"
    )
