"""Numeric comparison of an artifact's outputs with the PyTorch reference.

PSNR convention: 10*log10(range^2 / MSE) with range = the reference's peak-to-peak value (so it
is meaningful for unbounded noise predictions as well as images); images in [-1, 1] use range 2.
Identical arrays give +inf, reported as such (JSON: null plus `identical: true`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Parity:
    max_abs_error: float
    mean_abs_error: float
    cosine: float
    psnr_db: float  # math.inf when identical

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if math.isinf(self.psnr_db):
            d["psnr_db"] = None
            d["identical"] = True
        return d

    @staticmethod
    def worst(items: list[Parity]) -> Parity:
        return Parity(
            max_abs_error=max(p.max_abs_error for p in items),
            mean_abs_error=max(p.mean_abs_error for p in items),
            cosine=min(p.cosine for p in items),
            psnr_db=min(p.psnr_db for p in items),
        )


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float | None = None) -> float:
    ref = np.asarray(reference, dtype=np.float64)
    err = ref - np.asarray(test, dtype=np.float64)
    mse = float(np.mean(err * err))
    rng = float(np.ptp(ref)) if data_range is None else float(data_range)
    if mse == 0.0:
        return math.inf
    if rng == 0.0:  # a constant reference: fall back to unit range rather than -inf
        rng = 1.0
    return 10.0 * math.log10(rng * rng / mse)


def cosine(reference: np.ndarray, test: np.ndarray) -> float:
    a = np.asarray(reference, dtype=np.float64).ravel()
    b = np.asarray(test, dtype=np.float64).ravel()
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 and nb == 0.0:
        return 1.0
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(
    reference: np.ndarray, test: np.ndarray, data_range: float | None = None
) -> Parity:
    if reference.shape != test.shape:
        raise ValueError(f"shape mismatch: reference {reference.shape} vs test {test.shape}")
    if not np.all(np.isfinite(test)):
        return Parity(math.inf, math.inf, 0.0, -math.inf)
    diff = np.abs(np.asarray(reference, np.float64) - np.asarray(test, np.float64))
    return Parity(
        max_abs_error=float(diff.max()) if diff.size else 0.0,
        mean_abs_error=float(diff.mean()) if diff.size else 0.0,
        cosine=cosine(reference, test),
        psnr_db=psnr(reference, test, data_range),
    )
