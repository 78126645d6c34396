"""Attention kernels shared by every model family.

The kernel is an explicit enum on each attention module (never a module-level switch), so a pass
that rewrites attention changes exactly the modules it visits and nothing else.
"""

from __future__ import annotations

import enum

import torch
import torch.nn.functional as F


class TokenAttention(torch.nn.Module):
    """Every token attention (STOIC, UNet) derives from this: forward(x (B, T, C), context=None)
    with `to_q`/`to_k`/`to_v`/`to_out` projections, `heads`, `kernel` and `relu_scale`. Passes,
    cost counters and layout rewrites find attention with `is_attention`, never by attributes."""


class SpatialAttention(torch.nn.Module):
    """The VAE decoder's mid attention: forward(x (B, C, H, W)) with its own GroupNorm and
    residual; one head; `to_q`/`to_k`/`to_v`/`to_out`, `group_norm`, `kernel`, `relu_scale`."""


def is_attention(module: torch.nn.Module) -> bool:
    """Any attention whose kernel a pass may switch (softmax / ReLU)."""
    return isinstance(module, TokenAttention | SpatialAttention)


def is_token_attention(module: torch.nn.Module) -> bool:
    return isinstance(module, TokenAttention)


class AttentionKernel(enum.StrEnum):
    SOFTMAX = "softmax"  # standard scaled dot-product attention
    RELU = "relu"  # out_i = sum_j (scale / L_k) * relu(q_i . k_j / sqrt(d)) v_j  (arXiv 2309.08586)


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel: AttentionKernel = AttentionKernel.SOFTMAX,
    relu_scale: float = 1.0,
) -> torch.Tensor:
    """q (B, H, Tq, D), k/v (B, H, Tk, D) -> (B, H, Tq, D)."""
    if kernel is AttentionKernel.SOFTMAX:
        return F.scaled_dot_product_attention(q, k, v)
    d = q.shape[-1]
    n_keys = k.shape[-2]
    weights = torch.relu(q @ k.transpose(-2, -1) * d**-0.5)  # (B, H, Tq, Tk)
    return (weights * (relu_scale / n_keys)) @ v
