"""keep_freed_memory: large freed tensors are reused without new page faults (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# allocates and frees a 64 MB tensor; prints the page faults of the nine after three warm-ups
FAULTS = """
import resource, sys, torch
from segformer.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(3):
    torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    torch.ones(16 << 20)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode: str, **env: str) -> tuple[bool, int]:
    out = subprocess.run(
        [sys.executable, "-c", FAULTS, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    applied, kept = faults("keep")
    assert applied
    _, default = faults("default")
    # 9 x 64 MB fresh each time: >= 9 x 16384 faults of 4 KiB (fewer with huge pages); kept:
    # the pages stay mapped
    assert default > 2000, default
    assert kept < default / 20, (kept, default)


def test_the_user_can_keep_mallocs_default() -> None:
    applied, _ = faults("keep", SEGFORMER_MALLOC="default")
    assert not applied
