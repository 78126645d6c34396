"""Two fixes for coremltools, applied before each conversion.

coremltools 9's group norm (`_group_norm_impl`, behind both `group_norm` and `native_group_norm`)
builds its reshape target from the input's shape as a constant list. When only the batch is
symbolic that list holds a symbol, and the conversion fails with "Cannot add const [is55, 16, 2,
8, 8]". Every UNet and VAE with a dynamic batch failed that way, so each was traced and converted
twice (the fixed-batch retry in targets/coreml.py). The fix writes the batch as -1 in both
reshapes, the same ops and values; other shapes go to coremltools' own code.

FP16ComputePrecision asks, for every op, whether a float32 constant input holds a finite value
past fp16's 65504 (`fp16_overflow`). It answers with np.abs, a boolean mask and a fancy-indexed
copy of every weight: 28 s of the 65 s conversion of SD-1.5's UNet (3.44 GB of weights,
py-spy). The fix first reads the constant's largest magnitude without a copy; at most 65504
means no overflow, the same answer. Anything else (a larger value, an inf, a NaN) goes to
coremltools' own test."""

from __future__ import annotations

from typing import Any

_PATCHED = "_mobilegen_batch_fix"
FP16_MAX = 65504.0


def apply() -> None:
    """Install both fixes once per process (idempotent)."""
    _fp16_overflow_fast_path()
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch import ops
    from coremltools.converters.mil.mil.types.symbolic import any_symbolic, is_symbolic

    original = ops._group_norm_impl
    if getattr(original, _PATCHED, False):
        return

    def group_norm_impl(x: Any, num_groups: int, weight: Any, bias: Any, eps: float) -> Any:
        n, c, rest = x.shape[0], x.shape[1], list(x.shape[2:])
        if not is_symbolic(n) or any_symbolic(rest) or is_symbolic(c):
            return original(x, num_groups, weight, bias, eps)
        groups = min(num_groups, c)
        axes = list(range(2, 3 + len(rest)))
        y = mb.reshape(x=x, shape=[-1, groups, c // groups, *rest])
        mean = mb.reduce_mean(x=y, axes=axes, keep_dims=True)  # the original's op sequence
        var = ops._var(y, axes=axes, keep_dims=True, unbiased=False)
        std = mb.sqrt(x=mb.add(x=var, y=eps))
        y = mb.real_div(x=mb.sub(x=y, y=mean), y=std)
        y = mb.reshape(x=y, shape=[-1, c, *rest])
        affine = [1, c] + [1] * len(rest)
        if weight is not None:
            y = mb.mul(x=y, y=mb.reshape(x=weight, shape=affine))
        if bias is not None:
            y = mb.add(x=y, y=mb.reshape(x=bias, shape=affine))
        return y

    setattr(group_norm_impl, _PATCHED, True)
    ops._group_norm_impl = group_norm_impl


def _fp16_overflow_fast_path() -> None:
    import numpy as np
    from coremltools.converters.mil.mil.passes.defs.quantization import FP16ComputePrecision

    original = FP16ComputePrecision.fp16_overflow
    if getattr(original, _PATCHED, False):
        return

    def within_fp16(var: Any) -> bool:
        """A float32 const whose every value lies in [-65504, 65504] (NaN compares False)."""
        if var.op is None or var.op.op_type != "const" or not var.is_tensor_or_scalar_of(
                dtype="fp32"):
            return True  # not a value fp16_overflow reads
        value = np.asarray(var.op.val.val)
        return value.size == 0 or bool(value.max() <= FP16_MAX and value.min() >= -FP16_MAX)

    def fp16_overflow(op: Any) -> bool:  # a staticmethod in coremltools
        for inputs in op.inputs.values():
            for var in inputs if isinstance(inputs, (list, tuple)) else [inputs]:
                if not within_fp16(var):
                    return original(op)
        return False

    setattr(fp16_overflow, _PATCHED, True)
    fp16_overflow.__wrapped__ = original  # type: ignore[attr-defined]  # functools' convention
    FP16ComputePrecision.fp16_overflow = staticmethod(fp16_overflow)
