"""Precision passes (fp16, int8, palettization) act per target on the exported artifact, not on
the PyTorch module: each runtime's toolkit does its own conversion. A target module that supports
them exposes

    supports(spec: PrecisionSpec) -> str | None      # None, or why this target cannot do it
    export_precision(req: ExportRequest, spec: PrecisionSpec) -> list[Artifact]

`req.calibration` holds input feeds collected from the model's own sampling trajectories,
stratified over timesteps: static int8 calibrates on them, fp16 runs its overflow check
(passes/fp16_safety.py) on them, the sensitivity plan (passes/sensitivity.py) scores on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from mobilegen.passes import PASSES

PrecisionKind = Literal["fp16", "int8", "palettize"]
Int8Mode = Literal["weight_only", "dynamic", "static"]
CalibrationMethod = Literal["minmax", "percentile", "entropy"]


@dataclass(frozen=True)
class PrecisionSpec:
    kind: PrecisionKind
    mode: Int8Mode = "weight_only"  # int8 only
    bits: int = 8  # palettize only (Core ML k-means palettization, 1..8 bits)
    activation_bits: int = 8  # int8 static: 8 (W8A8) or 16 (W8A16, what NPUs run)
    calibration_method: CalibrationMethod = "minmax"  # int8 static
    # Module paths ("blocks.3.mlp.fc2", "stem") kept in float: int8 static leaves them
    # unquantized, fp16 keeps them in fp32. Prefix match on the path's dotted parts.
    keep_float: tuple[str, ...] = ()
    target_step_psnr_db: float | None = None  # int8 static: sensitivity plan until this is met
    fp16_min_headroom: float = 2.0  # fp16: keep layers whose |activation| * this overflows

    @property
    def tag(self) -> str:
        """File-name and report tag: fp16, int8-weight_only, int8-static, int8-static-a16,
        palettize4."""
        if self.kind == "int8":
            a16 = "-a16" if self.mode == "static" and self.activation_bits == 16 else ""
            return f"int8-{self.mode}{a16}"
        if self.kind == "palettize":
            return f"palettize{self.bits}"
        return self.kind


# Why static int8 keeps the stem and head float on every target. Measured on STOIC S2 N12 L512
# (random weights, ONNX Runtime): the second stem conv alone at W8A8 cost 30.7 dB worst step PSNR
# (71 dB at A16: the loss is its 8-bit input), every trunk layer together 43 dB.
EDGE_REASON = ("stem/head outside the residual trunk (the stem's output is the trunk itself and "
               "the head writes the noise prediction: their 8-bit activation error reaches the "
               "output undiluted by residual connections)")


def matches(path: str, prefixes: tuple[str, ...] | list[str]) -> bool:
    """Module-path prefix match: 'blocks.3' matches 'blocks.3' and 'blocks.3.mlp.fc2', not
    'blocks.30'."""
    return any(path == p or path.startswith(p + ".") for p in prefixes)


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
        if spec.kind == "fp16" or (spec.kind == "int8" and spec.mode == "static"):
            plan.calibration_feeds = max(plan.calibration_feeds, opts.calibration_feeds)
    return plan
