"""mobilegen's UNet cut in two at a stage boundary, as Apple's `--chunk-unet` cuts the converted
program: near half of the weights (Apple: the first op past half the weight bytes; here the stage
boundary closest to half the parameters). Chunk 1 takes the UNet's inputs and returns the state
at the cut (the feature map, the time embedding, the skips still to be consumed); chunk 2 takes
those plus the original inputs it reads (`encoder_hidden_states`) and returns the prediction, so
that Apple's Swift `[ManagedMLModel].predictions(from:)` (ManagedMLModel.swift: the next stage's
inputs are the last stage's outputs merged with the original inputs) runs them as one UNet.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

STATE = "chunk_state_"  # chunk 1's output names: chunk_state_0 (x), _1 (temb), _2.. (skips)


def _steps(unet: Any) -> list[tuple[str, list[nn.Module]]]:
    """The UNet's forward as named steps with the modules each runs (for the weight count)."""
    steps: list[tuple[str, list[nn.Module]]] = [("stem", [unet.conv_in, unet.time_embedding])]
    steps += [(f"down_{k}", [b]) for k, b in enumerate(unet.down_blocks)]
    steps.append(("mid", [unet.mid_block]))
    steps += [(f"up_{k}", [b]) for k, b in enumerate(unet.up_blocks)]
    steps.append(("head", [unet.conv_norm_out, unet.conv_out]))
    return steps


def split_point(unet: Any) -> int:
    """Steps [0, s) go to chunk 1: the boundary whose cumulative weights are closest to half."""
    sizes = [sum(p.numel() for m in mods for p in m.parameters()) for _, mods in _steps(unet)]
    total, cum, best = sum(sizes), 0, (float("inf"), 1)
    for s in range(1, len(sizes)):
        cum += sizes[s - 1]
        best = min(best, (abs(cum - total / 2), s))
    return best[1]


def _run(unet: Any, names: list[str], state: dict[str, Any]) -> None:
    for name in names:
        kind, _, idx = name.partition("_")
        x, temb, ctx, skips = state["x"], state["temb"], state["ctx"], state["skips"]
        if kind == "stem":
            state["temb"] = unet.time_embedding(unet.time_features(state["t"]).to(x.dtype))
            state["x"] = unet.conv_in(x)
            state["skips"] = [state["x"]]
        elif kind == "down":
            state["x"] = unet.down_blocks[int(idx)](x, temb, ctx, skips)
        elif kind == "mid":
            state["x"] = unet.mid_block(x, temb, ctx)
        elif kind == "up":
            state["x"] = unet.up_blocks[int(idx)](x, temb, ctx, skips)
        else:
            state["x"] = unet.conv_out(F.silu(unet.conv_norm_out(x)))


class Chunk1(nn.Module):
    def __init__(self, unet: Any, split: int) -> None:
        super().__init__()
        self.unet, self.names = unet, [n for n, _ in _steps(unet)[:split]]

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state: dict[str, Any] = {"x": sample, "t": timestep, "ctx": context, "temb": None,
                                 "skips": []}
        _run(self.unet, self.names, state)
        return (state["x"], state["temb"], *state["skips"])


class Chunk2(nn.Module):
    def __init__(self, unet: Any, split: int) -> None:
        super().__init__()
        self.unet, self.names = unet, [n for n, _ in _steps(unet)[split:]]

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        """args: chunk 1's outputs in order, then the context."""
        *states, context = args
        state: dict[str, Any] = {"x": states[0], "temb": states[1], "ctx": context,
                                 "skips": list(states[2:])}
        _run(self.unet, self.names, state)
        return state["x"]


def split(unet: Any) -> tuple[Chunk1, Chunk2]:
    if not all(hasattr(unet, a) for a in ("down_blocks", "up_blocks", "time_features")):
        from mobilegen.errors import ExportError

        raise ExportError(f"apple-coreml: chunk_unet needs mobilegen's UNet family; the "
                          f"denoiser is a {type(unet).__name__} (set [pipeline] chunk_unet = "
                          "false)")
    s = split_point(unet)
    return Chunk1(unet, s).eval(), Chunk2(unet, s).eval()
