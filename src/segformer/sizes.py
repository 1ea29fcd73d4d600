"""Sizes given as an int or two ints; a leaf module (no segformer imports), so the data and
inference sides share it without depending on each other."""

from __future__ import annotations

from collections.abc import Sequence

from segformer.errors import InputError


def pair(value: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    """``value`` as (a, b): an int n -> (n, n); two ints (a list, a tuple, Hydra's ListConfig)
    -> a tuple of them. Anything else raises ValueError naming ``name``."""
    if isinstance(value, int):
        return int(value), int(value)
    values = [int(v) for v in value]
    if len(values) != 2:
        raise InputError(f"{name}={value!r}; expected an int or two ints")
    return values[0], values[1]
