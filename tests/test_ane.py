"""The ANE attention layout is the same function as the original, in PyTorch fp32."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import tiny_config
from mobilegen.checkpoints.loader import build_random
from mobilegen.models.attention import AttentionKernel
from mobilegen.targets.ane import (
    AneAttention,
    AneSpatialAttention,
    apply_ane_layout,
    apply_layout,
)


def _max_diff(a: nn.Module, b: nn.Module, inputs) -> float:
    with torch.no_grad():
        return (a(*inputs) - b(*inputs)).abs().max().item()


@pytest.mark.parametrize(("overrides", "n_attn"), [
    (dict(conditioning="class", num_classes=3), 2),
    (dict(conditioning="context", context_dim=16, context_len=5), 4),  # + cross-attention
    (dict(time_injection="adaln"), 2),
])
def test_stoic_matches_original(overrides, n_attn):
    model = build_random("stoic", tiny_config(**overrides), seed=1).model.eval()
    ane, n = apply_ane_layout(model)
    assert n == n_attn
    assert sum(isinstance(m, AneAttention) for m in ane.modules()) == n_attn
    assert not any(isinstance(m, AneAttention) for m in model.modules())  # original untouched
    inputs = model.example_inputs(3, seed=2)
    with torch.no_grad():
        assert model(*inputs).abs().max() > 1e-3
    assert _max_diff(model, ane, inputs) <= 1e-5


def test_projections_are_1x1_convs_on_channels_first_tensors():
    model = build_random("stoic", tiny_config(), seed=0).model.eval()
    ane, _ = apply_ane_layout(model)
    attn = ane.blocks[0].attn
    assert all(isinstance(getattr(attn, p), nn.Conv2d) and getattr(attn, p).kernel_size == (1, 1)
               for p in ("to_q", "to_k", "to_v", "to_out"))
    seen = []
    attn.to_q.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    with torch.no_grad():
        ane(*model.example_inputs(2))
    assert seen == [(2, 32, 1, 16)]  # (B, C, 1, S): 8x8 image, stride 2 -> 16 tokens


def test_relu_attention_kernel_is_kept():
    model = build_random("stoic", tiny_config(), seed=0).model.eval()
    for m in model.modules():
        if hasattr(m, "kernel"):
            m.kernel, m.relu_scale = AttentionKernel.RELU, 0.7
    ane, _ = apply_ane_layout(model)
    assert ane.blocks[1].attn.kernel is AttentionKernel.RELU
    assert _max_diff(model, ane, model.example_inputs(2, seed=4)) <= 1e-5


def test_unet_attention_matches_original():
    unet = pytest.importorskip("mobilegen.models.unet")
    cfg = unet.UNetConfig(
        block_out_channels=(32, 64), down_resnets=(1, 1), down_attentions=(1, 1),
        up_resnets=(2, 2), up_attentions=(1, 1), mid_resnets=1, mid_attentions=1,
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=8, sample_size=8,
        context_len=4,
    )
    torch.manual_seed(0)
    model = unet.EfficientUNet(cfg).eval()
    ane, n = apply_ane_layout(model)
    assert n == 10  # 5 transformer blocks x (self + cross)
    assert _max_diff(model, ane, model.example_inputs(2, seed=1)) <= 1e-5


def test_captured_program_uses_conv_projections():
    from mobilegen.export.run import capture

    model = build_random("stoic", tiny_config(), seed=0).model.eval()
    ane, _ = apply_layout(model, "ane")

    def convs(m: nn.Module) -> int:
        program = capture(m, model.example_inputs(2))
        return sum("conv2d" in str(n.target) for n in program.graph.nodes)

    assert convs(ane) == convs(model) + 2 * 4  # 2 blocks x q/k/v/out as 1x1 convolutions
    assert apply_layout(model, "default") == (model, 0)


def test_vae_spatial_attention_matches_original():
    vae = pytest.importorskip("mobilegen.models.vae_decoder")
    torch.manual_seed(0)
    attn = vae.SpatialSelfAttention(16, 16, groups=4, eps=1e-6).eval()
    model = nn.Sequential(attn)
    ane, n = apply_ane_layout(model)
    assert n == 1 and isinstance(ane[0], AneSpatialAttention)
    x = torch.randn(2, 16, 4, 4)
    assert _max_diff(model, ane, (x,)) <= 1e-5


def test_a_model_without_attention_is_returned_unchanged():
    model = nn.Sequential(nn.Conv2d(2, 2, 1)).eval()
    ane, n = apply_ane_layout(model)
    assert n == 0
    x = torch.randn(1, 2, 3, 3)
    assert _max_diff(model, ane, (x,)) == 0
