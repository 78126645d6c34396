"""fp16: each target converts its artifact to float16 with its own toolkit (ONNX: float16 weights
and compute with fp32 inputs/outputs kept and numerically fragile ops left in fp32; TFLite: fp16
weights; Core ML: FLOAT16 compute precision). See passes/precision.py for the target contract and
passes/precision_gates.py for the default tolerances of fp16 rows."""

from __future__ import annotations

from mobilegen.passes.precision import PrecisionSpec
from mobilegen.passes.precision_gates import PrecisionGateOptions


class Options(PrecisionGateOptions):
    pass


def precision_spec(options: Options) -> PrecisionSpec:
    return PrecisionSpec(kind="fp16")
