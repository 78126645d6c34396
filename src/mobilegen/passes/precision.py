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

from dataclasses import dataclass, field
from typing import Any, Literal

from mobilegen.passes import PASSES

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


@dataclass
class PrecisionPlan:
    """The recipe's precision passes in order, with what each row is gated on."""

    specs: list[tuple[str, PrecisionSpec, Any]] = field(default_factory=list)  # name, spec, options
    limits: dict[str, dict[str, float | None]] = field(default_factory=dict)  # tag -> gate limits
    calibration_feeds: int = 0  # 0 = no pass needs calibration

    def summary(self) -> list[dict[str, Any]]:
        return [{"name": name, "kind": "precision", "tag": spec.tag,
                 "options": opts.model_dump(), "gate_limits": self.limits[spec.tag]}
                for name, spec, opts in self.specs]


def precision_plan(recipe: Any) -> PrecisionPlan:
    plan = PrecisionPlan()
    for p in recipe.passes:
        entry = PASSES[p.name]
        if entry.kind != "precision":
            continue
        opts = p.config()
        spec = entry.load().precision_spec(opts)
        if spec.tag in plan.limits:  # two entries would write the same artifact
            raise ValueError(f"{spec.tag} is listed twice")
        plan.specs.append((p.name, spec, opts))
        plan.limits[spec.tag] = opts.limits(spec.tag)
        if spec.kind == "int8" and spec.mode == "static":
            plan.calibration_feeds = max(plan.calibration_feeds, opts.calibration_feeds)
    return plan
