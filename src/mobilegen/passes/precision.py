"""Precision passes (fp16, int8, palettization) act per target on the exported artifact, not on
the PyTorch module: each runtime's toolkit does its own conversion. A target module that supports
them exposes

    supports(spec: PrecisionSpec) -> str | None      # None, or why this target cannot do it
    export_precision(program, io, example, profile, workdir, stem, param_bytes,
                     spec: PrecisionSpec,
                     calibration: list[dict[str, np.ndarray]]) -> list[Artifact]

`calibration` holds input feeds collected from the model's own sampling trajectories, stratified
over timesteps (used by static int8; ignored otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PrecisionKind = Literal["fp16", "int8", "palettize"]
Int8Mode = Literal["weight_only", "dynamic", "static"]


@dataclass(frozen=True)
class PrecisionSpec:
    kind: PrecisionKind
    mode: Int8Mode = "weight_only"  # int8 only
    bits: int = 8  # palettize only (Core ML k-means palettization, 1..8 bits)

    @property
    def tag(self) -> str:
        """File-name and report tag: fp16, int8-weight_only, int8-static, palettize4."""
        if self.kind == "int8":
            return f"int8-{self.mode}"
        if self.kind == "palettize":
            return f"palettize{self.bits}"
        return self.kind
