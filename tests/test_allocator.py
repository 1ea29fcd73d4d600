"""keep_freed_memory: large freed tensors are reused without new page faults (glibc)."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

# allocates and frees a 64 MB tensor; prints the page faults of each of nine after three warm-ups
FAULTS = """
import resource, sys, torch
from segformer.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
for _ in range(3):
    torch.ones(16 << 20)
for _ in range(9):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(16 << 20)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, end=" ")
print(applied)
"""


def faults(mode: str, **env: str) -> tuple[bool, list[int]]:
    """Whether keep_freed_memory applied, and the page faults of each allocation."""
    *counts, applied = subprocess.run(
        [sys.executable, "-c", FAULTS, mode],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return applied == "True", [int(c) for c in counts]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt only")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    applied, kept = faults("keep")
    assert applied
    _, default = faults("default")
    # default: each 64 MB is fresh, 16384 faults of 4 KiB (32 with huge pages). Kept: the pages
    # stay mapped. The heap may still grow once when a small block lands in the freed one (a CI
    # run saw one allocation of nine fault 16384 times), so the typical allocation is compared.
    assert statistics.median(default) >= 32, default
    assert statistics.median(kept) < statistics.median(default) / 20, (kept, default)
    assert sum(kept) < sum(default) / 3, (kept, default)


def test_the_user_can_keep_mallocs_default() -> None:
    applied, _ = faults("keep", SEGFORMER_MALLOC="default")
    assert not applied
