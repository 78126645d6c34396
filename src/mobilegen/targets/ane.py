"""Apple Neural Engine attention layout, chosen by a target profile's `layout = "ane"`.

The ANE works on 4-D channels-first tensors whose last axis is the sequence, and runs 1x1
convolutions far better than the batched matmuls a (B, T, C) Linear lowers to. This rewrite swaps
every attention module (anything with to_q / to_k / to_v / to_out projections and `heads`, as in
STOIC and the UNet) for `AneAttention`, and the VAE's spatial attention for
`AneSpatialAttention`: the same call signature and outputs, computed as (B, C, 1, S) with 1x1
convolutions for the projections and one small attention per head (no reshape/transpose of a
(B, heads, S, d) tensor). The trade-off: more, smaller ops, which is what
the ANE wants and is slightly slower on CPU/GPU, so only targets that ask for it get it.

The rewrite works on a copy; the caller's model is untouched (other targets capture the original).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn

from mobilegen.errors import ConfigError
from mobilegen.models.attention import AttentionKernel, SpatialAttention, is_token_attention


def _conv_from_linear(linear: nn.Linear) -> nn.Conv2d:
    """The same map as `linear`, as a 1x1 convolution: weight (out, in) -> (out, in, 1, 1)."""
    conv = nn.Conv2d(linear.in_features, linear.out_features, 1, bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight[:, :, None, None])
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _to_channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2).unsqueeze(2)  # (B, S, C) -> (B, C, 1, S)


class AneAttention(nn.Module):
    """Multi-head attention in the ANE layout; forward(x, context=None) like the module it replaces.

    For ANE; slightly slower than the (B, T, C) original on CPU and GPU."""

    def __init__(self, to_q: nn.Linear, to_k: nn.Linear, to_v: nn.Linear, to_out: nn.Linear,
                 heads: int, kernel: AttentionKernel, relu_scale: float) -> None:
        super().__init__()
        self.heads = heads
        self.kernel = kernel
        self.relu_scale = relu_scale
        self.to_q = _conv_from_linear(to_q)
        self.to_k = _conv_from_linear(to_k)
        self.to_v = _conv_from_linear(to_v)
        self.to_out = _conv_from_linear(to_out)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = _to_channels_first(x)  # (B, C, 1, Tq)
        src = h if context is None else _to_channels_first(context)  # (B, D, 1, Tk)
        q, k, v = self.to_q(h), self.to_k(src), self.to_v(src)  # (B, C, 1, T*)
        d = q.shape[1] // self.heads
        n_keys = k.shape[-1]
        outs = []
        for i in range(self.heads):  # per-head slices along channels: no head reshape
            qh, kh, vh = (a[:, i * d:(i + 1) * d] for a in (q, k, v))  # (B, d, 1, T*)
            w = torch.einsum("bchq,bchk->bkhq", qh, kh) * d**-0.5  # (B, Tk, 1, Tq)
            if self.kernel is AttentionKernel.SOFTMAX:
                w = w.softmax(dim=1)
            else:
                w = torch.relu(w) * (self.relu_scale / n_keys)
            # out[b,c,q] = sum_k v[b,c,k] w[b,k,q] as a matmul: coremltools' einsum
            # lowering rejects this contraction when the batch axis is dynamic
            outs.append(vh.squeeze(2) @ w.squeeze(2))  # (B, d, Tq)

        out = self.to_out(torch.cat(outs, dim=1).unsqueeze(2))  # (B, C, 1, Tq)
        return out.squeeze(2).transpose(1, 2)  # (B, Tq, C)


class AneSpatialAttention(nn.Module):
    """The VAE's single-head spatial self-attention (GroupNorm, attention over H*W, residual) in
    the ANE layout: (B, C, H, W) -> (B, C, 1, HW) with 1x1 convolutions; no (B, HW, C) transpose.

    For ANE; slightly slower than the original on CPU and GPU."""

    def __init__(self, group_norm: nn.GroupNorm, to_q: nn.Linear, to_k: nn.Linear,
                 to_v: nn.Linear, to_out: nn.Linear, kernel: AttentionKernel,
                 relu_scale: float) -> None:
        super().__init__()
        self.kernel = kernel
        self.relu_scale = relu_scale
        self.group_norm = group_norm
        self.to_q = _conv_from_linear(to_q)
        self.to_k = _conv_from_linear(to_k)
        self.to_v = _conv_from_linear(to_v)
        self.to_out = _conv_from_linear(to_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).unsqueeze(2)  # (B, C, 1, HW)
        q, k, v = self.to_q(t), self.to_k(t), self.to_v(t)  # (B, inner, 1, HW)
        wts = torch.einsum("bchq,bchk->bkhq", q, k) * q.shape[1] ** -0.5  # (B, HWk, 1, HWq)
        if self.kernel is AttentionKernel.SOFTMAX:
            wts = wts.softmax(dim=1)
        else:
            wts = torch.relu(wts) * (self.relu_scale / k.shape[-1])
        out = (v.squeeze(2) @ wts.squeeze(2)).unsqueeze(2)  # (B, inner, 1, HWq)
        return self.to_out(out).reshape(b, c, h, w) + x  # (B, C, H, W)


def _out_linear(module: nn.Module, name: str) -> nn.Linear:
    out = module.to_out
    if isinstance(out, nn.ModuleList):  # diffusers layout: to_out = [Linear, (Dropout)]
        extra = [m for m in list(out)[1:] if not isinstance(m, nn.Dropout | nn.Identity)]
        if extra:
            raise ConfigError(f"ANE layout: {name}.to_out has {extra[0]!r} after its Linear")
        out = out[0]
    if not isinstance(out, nn.Linear):
        raise ConfigError(f"ANE layout: {name}.to_out is {type(out).__name__}, expected Linear")
    return out


def is_spatial_attention(module: nn.Module) -> bool:
    """The VAE's mid attention: forward(x (B, C, H, W)) with its own GroupNorm and residual."""
    return isinstance(module, SpatialAttention)


def apply_ane_layout(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of `model` with every attention module in the ANE layout; returns (copy, count)."""
    new = copy.deepcopy(model)
    replaced = 0
    for name, module in list(new.named_modules()):
        spatial = is_spatial_attention(module)
        if isinstance(module, AneAttention | AneSpatialAttention) or not (
                spatial or is_token_attention(module)):
            continue
        projections = [module.to_q, module.to_k, module.to_v]
        for proj, what in zip(projections, ("to_q", "to_k", "to_v"), strict=True):
            if not isinstance(proj, nn.Linear):
                raise ConfigError(f"ANE layout: {name}.{what} is {type(proj).__name__}, "
                                  "expected Linear")
        kernel = getattr(module, "kernel", AttentionKernel.SOFTMAX)
        relu_scale = getattr(module, "relu_scale", 1.0)
        out = _out_linear(module, name)
        ane: nn.Module = (
            AneSpatialAttention(module.group_norm, *projections, out, kernel, relu_scale)
            if spatial else AneAttention(*projections, out, module.heads, kernel, relu_scale)
        )
        parent_name, _, child = name.rpartition(".")
        parent: Any = new.get_submodule(parent_name) if parent_name else new
        setattr(parent, child, ane)
        replaced += 1
    # replaced == 0 (e.g. a decoder pruned of its attention) is fine: convolutions already suit
    # the ANE, and the caller sees the count
    return (new if model.training else new.eval()), replaced


LAYOUTS = {"ane": apply_ane_layout}


def apply_layout(model: nn.Module, layout: str) -> tuple[nn.Module, int]:
    """The model for a profile's layout: itself for "default", else the rewritten copy."""
    if layout == "default":
        return model, 0
    return LAYOUTS[layout](model)
