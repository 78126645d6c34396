"""Accelerator forms: rewrites a target profile chooses (`accel_rewrites = [...]`) so that the
phone's accelerator takes ops its vendor tool reports it lacks (targets/coverage.py says which).

Each rewrite is a small function with the call signature of the torch function it replaces, and
states its trade-off. They act while the model is captured, inside `rewrite_forms(names)`: a
TorchFunctionMode scoped to that capture, so the model files stay as they are, the functional
calls inside `forward` (the sinusoidal time embedding is a free function in every family, GEGLU
calls F.gelu) are reached as well as module calls, and other targets capture the original.

- "time_sin_only": cos(x) -> sin(x + pi/2). NNAPI takes Sin but not Cos. Deviation: the rounding
  of x + pi/2 in fp32 (half an ulp of x: about 3e-5 at t*freq = 1000). The alternative, moving
  the sinusoid out of the graph as an input the sampler computes, would change every artifact's
  inputs (and the sampling loop apps run); kept in the graph so one feed contract serves all.
- "label_one_hot": embedding(y, W) -> relu(1 - (float(y) - k)^2) @ W over k = 0..rows-1. Exact
  for integer labels (< 2^24): 1 where y = k, <= 0 elsewhere. Replaces the int64 Gather the
  CoreML EP rejects with Cast, Sub, Mul, Relu, MatMul (not Abs: the ML program EP lacks it).
  Costs one (B, rows) x (rows, D) matmul, nothing for a class table.
- "gelu_tanh": exact GELU (Erf / ONNX Gelu) -> 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
  written out in Tanh/Mul/Add. Not exact: |error| <= 5e-4 per activation; measured per model
  (parity rows). Prefer opset 20's lossless ONNX Gelu where the EP takes it (profile `opset`).
- "layer_norm_decomposed": layer_norm -> mean / variance / rsqrt / affine in elementwise ops,
  for EPs without LayerNormalization. Same math; float rounding order differs (~1e-6).
- "group_norm_decomposed": group_norm -> the same over (B, G, C/G * H * W) groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

ACCEL_REWRITES = ("time_sin_only", "label_one_hot", "gelu_tanh", "layer_norm_decomposed",
                  "group_norm_decomposed")


def sin_only_cos(input: Any, *, out: Any = None) -> Any:
    """torch.cos as a phase-shifted sine (NNAPI has Sin, not Cos)."""
    import torch

    return torch.sin(input + math.pi / 2)


def one_hot_embedding(input: Any, weight: Any, padding_idx: Any = None, max_norm: Any = None,
                      norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                      sparse: bool = False) -> Any:
    """F.embedding as a one-hot matmul built from float ops (no int64 Gather)."""
    import torch

    rows = torch.arange(weight.shape[0], dtype=weight.dtype)  # (N,)
    d = input.to(weight.dtype).unsqueeze(-1) - rows  # (..., N): 0 at the label's row
    one_hot = torch.relu(1.0 - d * d)  # (..., N)
    return one_hot @ weight  # (..., D)


def tanh_gelu(input: Any, approximate: str = "none") -> Any:
    """F.gelu in its tanh form, written out (no Erf, no Gelu op)."""
    import torch

    x = input
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x * x * x)))


def decomposed_layer_norm(input: Any, normalized_shape: Any, weight: Any = None, bias: Any = None,
                          eps: float = 1e-5) -> Any:
    """F.layer_norm in elementwise ops (ReduceMean, Sub, Mul, Add, Sqrt, Div)."""
    import torch

    dims = tuple(range(-len(normalized_shape), 0))
    centered = input - input.mean(dim=dims, keepdim=True)
    out = centered / torch.sqrt((centered * centered).mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        out = out * weight
    return out + bias if bias is not None else out


def decomposed_group_norm(input: Any, num_groups: int, weight: Any = None, bias: Any = None,
                          eps: float = 1e-5) -> Any:
    """F.group_norm in elementwise ops over (B, G, C/G * spatial) groups."""
    import torch

    b, c = input.shape[0], input.shape[1]
    grouped = input.reshape(b, num_groups, -1)  # (B, G, C/G * H * W)
    centered = grouped - grouped.mean(dim=-1, keepdim=True)
    normed = centered / torch.sqrt((centered * centered).mean(dim=-1, keepdim=True) + eps)
    out = normed.reshape(input.shape)
    affine = (1, c) + (1,) * (input.dim() - 2)
    if weight is not None:
        out = out * weight.reshape(affine)
    return out + bias.reshape(affine) if bias is not None else out


def _replacements() -> dict[str, tuple[Callable[..., Any], Callable[..., Any]]]:
    """rewrite name -> (the torch function it replaces, its replacement)."""
    import torch
    import torch.nn.functional as F

    return {
        "time_sin_only": (torch.cos, sin_only_cos),
        "label_one_hot": (F.embedding, one_hot_embedding),
        "gelu_tanh": (F.gelu, tanh_gelu),
        "layer_norm_decomposed": (F.layer_norm, decomposed_layer_norm),
        "group_norm_decomposed": (F.group_norm, decomposed_group_norm),
    }


@contextmanager
def rewrite_forms(names: list[str] | tuple[str, ...]) -> Iterator[None]:
    """Within the block, torch calls named by `names` run in their accelerator form (for a
    capture, or for measuring a rewrite's deviation in PyTorch)."""
    if not names:
        yield
        return
    from torch.overrides import TorchFunctionMode

    unknown = sorted(set(names) - set(ACCEL_REWRITES))
    if unknown:
        raise ValueError(f"unknown accelerator rewrite '{unknown[0]}' "
                         f"(known: {', '.join(ACCEL_REWRITES)})")
    table = {orig: new for n, (orig, new) in _replacements().items() if n in names}

    class _Forms(TorchFunctionMode):
        def __torch_function__(self, func: Any, types: Any, args: Any = (),
                               kwargs: Any = None) -> Any:
            return table.get(func, func)(*args, **(kwargs or {}))

    with _Forms():
        yield


def program_key(layout: str, rewrites: list[str] | tuple[str, ...], fixed_shapes: bool) -> str:
    """The name of a capture: "default" for the plain one, else what it applies."""
    parts = ([] if layout == "default" else [layout]) + sorted(rewrites)
    parts += ["fixed"] if fixed_shapes else []
    return "+".join(parts) or "default"
