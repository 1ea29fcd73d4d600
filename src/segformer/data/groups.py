"""Grouped splits: samples that share a group (a drive, a scene, a patient, tiles of one image)
stay on one side of the train/val boundary, so validation scores predict unseen groups.

A sample's group comes from a regular expression searched in its image path relative to the
dataset root (the first capture group, or the whole match), e.g. ``([^/_]+)_[^/]*$`` for
CamVid's ``train/0016E5_07959.png``, or from a table file with one ``<image> <group>`` pair a
line (image file name or root-relative path, with or without its suffix; comma, tab or spaces).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from segformer.data.files import Sample
from segformer.errors import InputError, MissingFileError


def _key_names(image: Path, root: Path) -> list[str]:
    """The names a table may give an image under: root-relative path or file name, each with
    and without its suffix."""
    try:
        rel = image.relative_to(root).as_posix()
    except ValueError:
        rel = image.as_posix()
    return [rel, rel[: -len(image.suffix)] if image.suffix else rel, image.name, image.stem]


def read_group_table(path: Path) -> dict[str, str]:
    """``<image> <group>`` per line (comma, tab or whitespace separated; blank and # lines
    skipped); a header line ``image,group`` is allowed."""
    if not path.is_file():
        raise MissingFileError(f"data.group_file {path} not found")
    table: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f.strip() for f in re.split(r"[,\t]|\s+", line) if f.strip()]
        if len(fields) != 2:
            raise InputError(f"{path}:{number}: expected '<image> <group>', got {line!r}")
        if number == 1 and fields == ["image", "group"]:
            continue
        table[fields[0]] = fields[1]
    return table


def sample_groups(
    samples: Sequence[Sample], root: Path, pattern: str | None, table: dict[str, str] | None
) -> list[str]:
    """The group of every sample, by ``pattern`` or by ``table`` (one of them)."""
    regex = re.compile(pattern) if pattern is not None else None
    groups = []
    for image, _ in samples:
        if regex is not None:
            rel = _key_names(image, root)[0]
            match = regex.search(rel)
            if match is None:
                raise InputError(f"data.group {pattern!r} does not match {rel!r} ({image})")
            groups.append(match.group(1) if regex.groups else match.group(0))
        else:
            assert table is not None
            name = next((n for n in _key_names(image, root) if n in table), None)
            if name is None:
                raise InputError(f"data.group_file names no group for {image}")
            groups.append(table[name])
    return groups


def choose_val_groups(groups: Sequence[str], val_groups: Sequence[str] | float, seed: int) -> set:
    """The held-out groups: the named ones, or (a fraction in (0, 1)) whole groups drawn with
    ``seed`` until they hold at least that fraction of the samples."""
    counts = Counter(groups)
    if isinstance(val_groups, float | int) and not isinstance(val_groups, bool):
        fraction = float(val_groups)
        if not 0.0 < fraction < 1.0:
            raise InputError(f"data.val_groups={val_groups}: a fraction must be in (0, 1)")
        order = sorted(counts)
        random.Random(seed).shuffle(order)
        chosen: set[str] = set()
        for group in order:
            if sum(counts[g] for g in chosen) >= fraction * len(groups):
                break
            chosen.add(group)
    else:
        chosen = {str(g) for g in val_groups}
        unknown = sorted(chosen - set(counts))
        if unknown:
            raise InputError(
                f"data.val_groups {unknown} not among the groups of the training split(s): "
                f"{sorted(counts)}"
            )
    if len(chosen) >= len(counts):
        raise InputError(
            f"data.val_groups={val_groups} holds out every group ({len(counts)}): nothing is left "
            "to train on"
        )
    return chosen


def hold_out(
    samples: Sequence[Sample], groups: Sequence[str], held: set
) -> tuple[list[Sample], list[Sample]]:
    """(training samples, validation samples): the held-out groups' samples go to validation."""
    train = [s for s, g in zip(samples, groups, strict=True) if g not in held]
    val = [s for s, g in zip(samples, groups, strict=True) if g in held]
    return train, val
