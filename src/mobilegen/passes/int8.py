"""int8: each target quantizes its artifact with its own toolkit.

Modes:
- weight_only: weights stored int8 (per output channel, symmetric), compute stays float: a smaller
  file, the same arithmetic. ONNX: DequantizeLinear on each MatMul/Gemm/Conv weight.
- dynamic: int8 weights, activations quantized on the fly per call (onnxruntime quantize_dynamic).
- static: W8A8 with activation ranges calibrated on feeds from the model's own sampling
  trajectories, stratified over timesteps (passes/calibration.py), because activation ranges move
  with t and calibrating at one timestep is wrong.
"""

from __future__ import annotations

from pydantic import Field

from mobilegen.passes.precision import Int8Mode, PrecisionSpec
from mobilegen.passes.precision_gates import PrecisionGateOptions


class Options(PrecisionGateOptions):
    mode: Int8Mode = "weight_only"
    calibration_feeds: int = Field(8, ge=1)  # static only: trajectory feeds, spread over t


def precision_spec(options: Options) -> PrecisionSpec:
    return PrecisionSpec(kind="int8", mode=options.mode)
