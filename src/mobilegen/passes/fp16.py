"""fp16: each target converts its artifact to float16 with its own toolkit (ONNX: float16 weights
and compute with fp32 inputs/outputs kept and numerically fragile ops left in fp32; TFLite: fp16
weights; Core ML: FLOAT16 compute precision). See passes/precision.py for the target contract and
passes/precision_gates.py for the default tolerances of fp16 rows.

Before converting, the ONNX target runs the fp16 safety check (passes/fp16_safety.py): the model
in fp16 arithmetic in PyTorch on feeds from the model's own sampling trajectory. Layers whose
largest |activation| times `min_headroom` reaches fp16's 65504 (or that give inf/NaN) are kept in
fp32 in the artifact, and the artifact's details list them with their measured maxima; the row is
gated on the headroom that remains (`min_headroom`, a factor: 2.0 = the largest activation may
double before it overflows)."""

from __future__ import annotations

from pydantic import Field

from mobilegen.passes.precision import PrecisionSpec
from mobilegen.passes.precision_gates import PrecisionGateOptions


class Options(PrecisionGateOptions):
    calibration_feeds: int = Field(8, ge=1)  # trajectory feeds the overflow check runs on
    min_headroom: float = Field(2.0, ge=1.0)
    keep_float: list[str] = Field(default_factory=list)  # module paths kept fp32 regardless

    def limits(self, tag: str) -> dict[str, float | None]:
        """The fp16 row is also gated on the headroom left after the fix (min_fp16_headroom)."""
        return {**super().limits(tag), "min_fp16_headroom": self.min_headroom}


def precision_spec(options: Options) -> PrecisionSpec:
    return PrecisionSpec(kind="fp16", fp16_min_headroom=options.min_headroom,
                         keep_float=tuple(options.keep_float))
