"""Bounds on architecture configs: an absurd or mistyped value is one line naming the key, found
before anything is built (depth = 100000 would take minutes and gigabytes just to be refused)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def out_of_range(values: Iterable[tuple[str, Any]], lo: float, hi: float) -> str | None:
    """The first (key, value) that is not a number in [lo, hi] (integers when `lo` is an int),
    as one phrase; None when all fit."""
    integral = isinstance(lo, int)
    for key, value in values:
        if isinstance(value, bool) or not isinstance(value, int if integral else int | float):
            kind = "an integer" if integral else "a number"
            return f"key '{key}' must be {kind}, found {value!r}"
        if not lo <= value <= hi:  # NaN fails this too
            return f"key '{key}' must be in [{lo}, {hi}], found {value!r}"
    return None


def first_problem(cfg: Any, bounds: dict[str, tuple[float, float]],
                  choices: dict[str, tuple[str, ...]] | None = None) -> str | None:
    """The first field of `cfg` outside its bounds or its choices, as one phrase."""
    for key, (lo, hi) in bounds.items():
        if (problem := out_of_range([(key, getattr(cfg, key))], lo, hi)) is not None:
            return problem
    for key, allowed in (choices or {}).items():
        if getattr(cfg, key) not in allowed:
            return f"key '{key}' must be one of {', '.join(allowed)}, found {getattr(cfg, key)!r}"
    return None
