"""relu_attention: replace softmax attention with ReLU attention (arXiv 2309.08586),

    out_i = sum_j (scale / L_k) * ReLU(q_i . k_j / sqrt(d)) * v_j,   L_k = number of keys,

on every attention module of any family (self- and cross-attention). Modules are found by the
shared convention, not by class: an attribute `kernel` of type AttentionKernel plus `relu_scale`,
read by `models.attention.attend`. ReLU attention drops the softmax's row-wise exp/sum/divide
(a reduction that is slow and fragile in low precision on phones) but changes the function, so it
needs recovery (distillation) to be usable; without it the deviation is reported as measured.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mobilegen.passes.base import ModulePassOptions, PassReport, RewriteContext, run_rewrite


class Options(ModulePassOptions):
    scale: float = Field(1.0, gt=0.0)  # weight per key = scale / L_k; 1.0 is the paper's 1/L_k


def to_relu(model: Any, scale: float) -> dict[str, int]:
    """In place; returns counts by attention kind (self / cross, told apart by module name)."""
    from mobilegen.models.attention import AttentionKernel, is_attention

    counts = {"self_attention": 0, "cross_attention": 0}
    for name, module in model.named_modules():
        if is_attention(module):
            if module.kernel is AttentionKernel.SOFTMAX:
                kind = "cross_attention" if "cross" in name or "attn2" in name else "self_attention"
                counts[kind] += 1
            module.kernel = AttentionKernel.RELU
            module.relu_scale = scale
    return counts


def run(model: Any, options: Options, ctx: RewriteContext) -> tuple[Any, PassReport]:
    return run_rewrite("relu_attention", model, options, ctx,
                       lambda m: to_relu(m, options.scale))
