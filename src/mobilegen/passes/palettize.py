"""palettize: Core ML weight palettization (coremltools `palettize_weights`, k-means look-up
tables of `bits` bits per tensor) on the target's ML program. Only Core ML targets implement it;
other targets get a row saying why. Off macOS the package is inspected, not run, so its gates
apply only where Core ML prediction runs (the row says so)."""

from __future__ import annotations

from pydantic import Field

from mobilegen.passes.precision import PrecisionSpec
from mobilegen.passes.precision_gates import PrecisionGateOptions


class Options(PrecisionGateOptions):
    bits: int = Field(4, ge=1, le=8)  # look-up table size 2**bits per weight tensor


def precision_spec(options: Options) -> PrecisionSpec:
    return PrecisionSpec(kind="palettize", bits=options.bits)
