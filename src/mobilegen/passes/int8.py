"""int8: each target quantizes its artifact with its own toolkit.

Modes:
- weight_only: weights stored int8, compute stays float: a smaller file, the same arithmetic.
  ONNX: MatMul -> com.microsoft MatMulNBits (8 bits, symmetric blocks of 32 along K), which
  onnxruntime runs with its own int8 kernels; Conv/Gemm weights through DequantizeLinear.
- dynamic: int8 weights, activations quantized on the fly per call (onnxruntime quantize_dynamic).
- static: int8 weights and calibrated activations (W8A8, or W8A16 with `activation_bits = 16`,
  what phone NPUs run). Only weight-bearing ops are quantized (Conv, Gemm, MatMul with a constant
  B), with symmetric per-channel weights; the time/conditioning path (every node that does not
  depend on the image input), the stem and head outside the residual trunk (ONNX; the first and
  last weight layers where a graph has no residual Add), activation-by-activation MatMuls
  (QK^T, attention x V), residual adds, norms and softmax stay float (the artifact's details list
  each with its reason). Activation ranges come from feeds along the model's own sampling
  trajectories, stratified over t (passes/calibration.py), by `calibration_method`.
  `keep_float` names further layers to leave float; `target_step_psnr_db` asks for the
  sensitivity plan (passes/sensitivity.py): the most sensitive layers stay float until the worst
  per-step PSNR against fp32 reaches the target.
"""

from __future__ import annotations

from pydantic import Field

from mobilegen.passes.precision import CalibrationMethod, Int8Mode, PrecisionSpec
from mobilegen.passes.precision_gates import PrecisionGateOptions


class Options(PrecisionGateOptions):
    mode: Int8Mode = "weight_only"
    calibration_feeds: int = Field(16, ge=1)  # static only: trajectory feeds, spread over t
    calibration_method: CalibrationMethod = "minmax"
    activation_bits: int = Field(8, ge=8, le=16, multiple_of=8)  # static: 8 (W8A8) or 16
    keep_float: list[str] = Field(default_factory=list)  # static: module paths left float
    target_step_psnr_db: float | None = None  # static: sensitivity plan until this is met


def precision_spec(options: Options) -> PrecisionSpec:
    return PrecisionSpec(kind="int8", mode=options.mode,
                         activation_bits=options.activation_bits,
                         calibration_method=options.calibration_method,
                         keep_float=tuple(options.keep_float),
                         target_step_psnr_db=options.target_step_psnr_db)
