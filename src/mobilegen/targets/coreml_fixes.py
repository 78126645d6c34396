"""A fix for coremltools' torch frontend, applied before each conversion.

coremltools 9's group norm (`_group_norm_impl`, behind both `group_norm` and `native_group_norm`)
builds its reshape target from the input's shape as a constant list. When only the batch is
symbolic that list holds a symbol, and the conversion fails with "Cannot add const [is55, 16, 2,
8, 8]". Every UNet and VAE with a dynamic batch failed that way, so each was traced and converted
twice (the fixed-batch retry in targets/coreml.py). The fix writes the batch as -1 in both
reshapes, the same ops and values; other shapes go to coremltools' own code."""

from __future__ import annotations

from typing import Any

_PATCHED = "_mobilegen_batch_fix"


def apply() -> None:
    """Install the group norm fix once per process (idempotent)."""
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
