"""gelu_to_silu: replace GELU (exact and tanh) with SiLU/swish.

MobileDiffusion swaps GELU for swish because GELU is unstable in low precision and slower on
mobile accelerators; SiLU is one fused op nearly everywhere. The function changes (SiLU is not
GELU), so the report measures the deviation, and recovery (distillation) can win it back.

Replaced: every nn.GELU module, and functional GELU where our model files use it: the UNet's
GEGLU feed-forward computes `h * gelu(gate)`; it becomes `h * silu(gate)` (a SwiGLU) with the same
projection weights.
"""

from __future__ import annotations

from typing import Any

from mobilegen.passes.base import ModulePassOptions, PassReport, RewriteContext, run_rewrite


class Options(ModulePassOptions):
    pass


def _swiglu_class() -> Any:
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SwiGLU(nn.Module):
        """GEGLU with its gate's GELU replaced by SiLU; same `proj` weights and call signature."""

        def __init__(self, proj: nn.Linear) -> None:
            super().__init__()
            self.proj = proj

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h, gate = self.proj(x).chunk(2, dim=-1)  # 2 x (B, T, hidden)
            return h * F.silu(gate)

    return SwiGLU


def replace_gelu(model: Any) -> dict[str, int]:
    """In place; returns counts by kind: gelu, gelu_tanh, geglu."""
    from torch import nn

    try:  # the UNet family may be absent in a trimmed install
        from mobilegen.models.unet import GEGLU
    except ImportError:
        GEGLU = None
    swiglu = None
    counts = {"gelu": 0, "gelu_tanh": 0, "geglu": 0}
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.GELU):
                counts["gelu_tanh" if child.approximate == "tanh" else "gelu"] += 1
                setattr(parent, child_name, nn.SiLU())
            elif GEGLU is not None and isinstance(child, GEGLU):
                swiglu = swiglu or _swiglu_class()
                counts["geglu"] += 1
                setattr(parent, child_name, swiglu(child.proj))
    return counts


def run(model: Any, options: Options, ctx: RewriteContext) -> tuple[Any, PassReport]:
    return run_rewrite("gelu_to_silu", model, options, ctx, replace_gelu)
