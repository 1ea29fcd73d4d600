"""A Hugging Face Hub cache written in the layout huggingface_hub itself writes, so loading by
repo id runs the real ``snapshot_download`` (offline) against it:

    <cache>/models--owner--name/refs/<branch or tag>          (the commit hash, no newline)
    <cache>/models--owner--name/snapshots/<commit>/<file>     (relative symlink into blobs/)
    <cache>/models--owner--name/blobs/<sha256 of the file>
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest


def add_to_hub_cache(
    cache: Path, repo_id: str, folder: Path, revision: str = "main", commit: str | None = None
) -> str:
    """Put every file of ``folder`` into ``cache`` as snapshot ``commit`` of ``repo_id``, with
    ``refs/<revision>`` pointing at it; returns the commit hash."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = commit or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / src.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def offline_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache under tmp_path, set as HF_HOME/HF_HUB_CACHE, with HF_HUB_OFFLINE=1:
    nothing can be downloaded, only what a test puts into the cache loads."""
    home = tmp_path / "hf_home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache
