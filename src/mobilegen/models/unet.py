"""Efficient UNet: SD-1.5's text-conditional UNet with every stage's block counts configurable.

SD-1.5 is one config and SnapFusion's Table 3 (arXiv 2306.00980) another; both are recipes.
Parameter names follow diffusers' UNet2DConditionModel wherever the structure is the same, so a
diffusers SD-family state dict loads as it is and the outputs match diffusers on the same weights.

Inputs: sample (B, in_channels, h, w) latents, timestep (B,) float32 in [0, 1000), and
encoder_hidden_states (B, 77, cross_attention_dim) text states. Output: (B, out_channels, h, w),
the predicted noise. h and w must be divisible by 2 ** (stages - 1).

Two rules generalise diffusers' fixed layout to any block counts:

1. Order inside a stage. A down/up stage runs its ResNet blocks in order; its attention blocks
   (Transformer2DModel-like) follow the ResNets, spread as evenly as possible: ResNet i is followed
   by floor((i+1)·a/r) - floor(i·a/r) attention blocks (r ResNets, a attentions). a == r gives
   diffusers' resnet/attention pairs; Up-2 of SnapFusion (6 / 3) gives two after each ResNet; with
   a < r the attentions sit after the later ResNets. The mid stage keeps diffusers' sandwich:
   attentions are spread the same way over the gaps between its ResNets (after ResNet 0 when it
   has one ResNet). Module indices (`attentions.j`) count in execution order.
2. Skips, grouped by resolution. Down stage k pushes its input (conv_in's output, or the previous
   stage's downsampler output) and each ResNet's output (after its attentions): d_k + 1 skips. The
   up stage that mirrors k consumes exactly those d_k + 1 skips, deepest first: ResNet i
   concatenates one skip while skips remain; when the stage has fewer ResNets than skips, its last
   ResNet concatenates all the remaining ones (no skip is dropped); extra ResNets take none. With
   up ResNets = d_k + 1 (diffusers' layers_per_block + 1, also SnapFusion's Table 3) this is
   exactly diffusers' skip wiring.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobilegen.errors import ConfigError
from mobilegen.models.attention import AttentionKernel, TokenAttention, attend
from mobilegen.models.bounds import first_problem, out_of_range
from mobilegen.signature import ModelIO, TensorSpec

_STAGE_FIELDS = ("down_resnets", "down_attentions", "up_resnets", "up_attentions")
UNET_MAX_STAGES = 8
# (min, max) of each scalar config key (models/bounds.py); per-stage lists are bounded apart
UNET_BOUNDS: dict[str, tuple[float, float]] = {
    "in_channels": (1, 64), "out_channels": (1, 64), "mid_resnets": (0, 64),
    "mid_attentions": (0, 64), "cross_attention_dim": (1, 16384),
    "transformer_layers_per_block": (1, 64), "norm_num_groups": (1, 1024),
    "norm_eps": (0.0, 1.0), "freq_shift": (-1e6, 1e6), "sample_size": (1, 4096),
    "context_len": (1, 4096), "latent_scaling_factor": (1e-6, 1e6),
}


@dataclass(frozen=True)
class UNetConfig:
    """Defaults are SD-1.5. Per-stage lists run shallow→deep for `down_*`, and in diffusers'
    `up_blocks` order (deepest first) for `up_*`."""

    in_channels: int = 4
    out_channels: int = 4
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_resnets: tuple[int, ...] = (2, 2, 2, 2)
    down_attentions: tuple[int, ...] = (2, 2, 2, 0)
    mid_resnets: int = 2
    mid_attentions: int = 1
    up_resnets: tuple[int, ...] = (3, 3, 3, 3)
    up_attentions: tuple[int, ...] = (0, 3, 3, 3)
    cross_attention_dim: int = 768
    attention_head_dim: int | tuple[int, ...] = 8  # the number of heads, as diffusers reads it
    transformer_layers_per_block: int = 1
    use_linear_projection: bool = False  # SD-1.5: 1x1 conv proj_in/proj_out; SD-2: Linear
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: float = 0.0
    sample_size: int = 64  # latent h = w for example inputs and export
    context_len: int = 77
    latent_scaling_factor: float = 0.18215  # of the VAE it pairs with (SD-1.x); manifest only

    def __post_init__(self) -> None:
        for name in ("block_out_channels", *_STAGE_FIELDS, "attention_head_dim"):
            value = getattr(self, name)
            if isinstance(value, list):  # TOML/JSON give lists; keep the config hashable
                object.__setattr__(self, name, tuple(value))
        bad = self._bounds_problem()  # first: the checks below divide by these
        if bad:
            raise ConfigError(f"invalid UNet config: {bad}")
        problems = []
        n = len(self.block_out_channels)
        for name in _STAGE_FIELDS:
            if len(getattr(self, name)) != n:
                problems.append(f"{name} has {len(getattr(self, name))} stages, expected {n}")
        if isinstance(self.attention_head_dim, tuple) and len(self.attention_head_dim) != n:
            problems.append(f"attention_head_dim has {len(self.attention_head_dim)} stages, "
                            f"expected {n}")
        if min((*self.down_resnets, *self.up_resnets), default=1) < 1:
            problems.append("every down/up stage needs at least 1 ResNet block")
        if min((*self.down_attentions, *self.up_attentions, self.mid_resnets,
                self.mid_attentions)) < 0:
            problems.append("block counts must be >= 0")
        for k, ch in enumerate(self.block_out_channels if not problems else ()):
            if ch % self.norm_num_groups:
                problems.append(f"block_out_channels[{k}]={ch} not divisible by norm_num_groups "
                                f"{self.norm_num_groups}")
            if ch % self.heads(k):
                problems.append(f"block_out_channels[{k}]={ch} not divisible by {self.heads(k)} "
                                "heads")
        if (problem := self.size_problem(self.sample_size)) is not None:
            problems.append(f"key 'sample_size': {problem}")
        if problems:
            raise ConfigError("invalid UNet config: " + "; ".join(problems))

    def _bounds_problem(self) -> str | None:
        if not isinstance(self.block_out_channels, tuple) or not 1 <= len(
                self.block_out_channels) <= UNET_MAX_STAGES:
            return (f"key 'block_out_channels' must list 1 to {UNET_MAX_STAGES} widths, found "
                    f"{self.block_out_channels!r}")
        stages = [(f"{name}[{i}]", v) for name in ("block_out_channels", *_STAGE_FIELDS)
                  if isinstance(getattr(self, name), tuple)
                  for i, v in enumerate(getattr(self, name))]
        heads = self.attention_head_dim
        heads_items = (list(enumerate(heads)) if isinstance(heads, tuple) else [(None, heads)])
        return (first_problem(self, UNET_BOUNDS)
                or out_of_range([(k, v) for k, v in stages if k.startswith("block_out")], 1,
                                16384)
                or out_of_range([(k, v) for k, v in stages if not k.startswith("block_out")], 0,
                                64)
                or out_of_range([("attention_head_dim" + ("" if i is None else f"[{i}]"), h)
                                 for i, h in heads_items], 1, 256))

    def size_problem(self, size: int) -> str | None:
        """Why `size` (latents per side) cannot be fed to this UNet, or None."""
        step = 2 ** (len(self.block_out_channels) - 1)
        if size < step or size % step:
            return f"{size} is not a positive multiple of 2^{len(self.block_out_channels) - 1}"
        return None

    @property
    def image_size(self) -> int:  # the name the pipeline uses for the default resolution
        return self.sample_size

    @property
    def num_stages(self) -> int:
        return len(self.block_out_channels)

    def heads(self, stage: int) -> int:
        """Attention heads of down stage `stage` (the mid stage uses the last one)."""
        h = self.attention_head_dim
        return h[stage] if isinstance(h, tuple) else h

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """Accepts exactly a recipe's [model.config] table (or `to_dict()` output)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown UNet config key '{unknown[0]}' (known: {sorted(known)})")
        try:
            return cls(**d)
        except TypeError as err:  # e.g. an int where a per-stage list belongs
            raise ConfigError(f"invalid UNet config value: {err}") from None


# ---------------------------------------------------------------- helpers


def timestep_embedding(
    t: torch.Tensor, dim: int, flip_sin_to_cos: bool = True, freq_shift: float = 0.0
) -> torch.Tensor:
    """t (B,) -> (B, dim) sinusoids, op for op as diffusers' get_timestep_embedding."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if flip_sin_to_cos:
        emb = torch.cat([emb[:, half:], emb[:, :half]], dim=-1)  # cos first
    return F.pad(emb, (0, dim % 2))  # (B, dim)


def spread(n_items: int, n_slots: int) -> list[int]:
    """How many of n_items go into each of n_slots, as evenly as possible (later slots first)."""
    return [(i + 1) * n_items // n_slots - i * n_items // n_slots for i in range(n_slots)]


def skip_plan(n_resnets: int, n_skips: int) -> list[int]:
    """Skips concatenated by each ResNet of an up stage (rule 2 of the module docstring)."""
    plan = [1 if i < n_skips else 0 for i in range(n_resnets)]
    plan[-1] += max(0, n_skips - n_resnets)
    return plan


# ---------------------------------------------------------------- blocks


class TimestepEmbedding(nn.Module):
    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ResnetBlock(nn.Module):
    """diffusers ResnetBlock2D: GN-SiLU-conv, + time, GN-SiLU-conv, + (1x1 conv) shortcut."""

    def __init__(self, c_in: int, c_out: int, temb: int, groups: int, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in, eps=eps)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out, eps=eps)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, C_out, H, W)
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))  # (B, C_out, H, W)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class Attention(TokenAttention):
    """diffusers Attention (no q/k/v bias); cross-attention when context_dim is given."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.kernel = AttentionKernel.SOFTMAX
        self.relu_scale = 1.0
        kv_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(kv_dim, dim, bias=False)
        self.to_v = nn.Linear(kv_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])  # index 0: diffusers' `to_out.0`

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        src = x if context is None else context
        # the head width written out, not -1: with a symbolic batch, coremltools cannot infer
        # a -1 and fails at its attention ("the embedding size ... cannot be symbolic")
        dh = d // self.heads
        q = self.to_q(x).view(b, t, self.heads, dh).transpose(1, 2)  # (B, h, T, d/h)
        k = self.to_k(src).view(b, src.shape[1], self.heads, dh).transpose(1, 2)  # (B, h, S, d/h)
        v = self.to_v(src).view(b, src.shape[1], self.heads, dh).transpose(1, 2)
        out = attend(q, k, v, self.kernel, self.relu_scale)  # (B, h, T, d/h)
        return self.to_out[0](out.transpose(1, 2).reshape(b, t, d))  # (B, T, d)


class GEGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, gate = self.proj(x).chunk(2, dim=-1)  # 2 x (B, T, hidden)
        return h * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4) -> None:
        super().__init__()
        # net.1 is diffusers' dropout slot, kept as Identity so net.2 keeps its name
        hidden = dim * mult
        self.net = nn.ModuleList([GEGLU(dim, hidden), nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class TransformerBlock(nn.Module):
    """diffusers BasicTransformerBlock: self-attention, cross-attention, GEGLU MLP (pre-LN)."""

    def __init__(self, dim: int, heads: int, context_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = Attention(dim, heads, context_dim)
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(self.norm1(x))  # (B, T, C)
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class Transformer2D(nn.Module):
    """diffusers Transformer2DModel (continuous input): GN, proj_in, blocks, proj_out, residual."""

    def __init__(self, ch: int, heads: int, context_dim: int, cfg: UNetConfig) -> None:
        super().__init__()
        self.linear = cfg.use_linear_projection
        self.norm = nn.GroupNorm(cfg.norm_num_groups, ch, eps=1e-6)
        proj = (lambda: nn.Linear(ch, ch)) if self.linear else (lambda: nn.Conv2d(ch, ch, 1))
        self.proj_in = proj()
        layers = cfg.transformer_layers_per_block
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(ch, heads, context_dim) for _ in range(layers)
        )
        self.proj_out = proj()

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.norm(x)
        if not self.linear:
            t = self.proj_in(t)
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, c)  # (B, HW, C)
        if self.linear:
            t = self.proj_in(t)
        for block in self.transformer_blocks:
            t = block(t, context)  # (B, HW, C)
        if self.linear:
            t = self.proj_out(t)
        t = t.reshape(b, h, w, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear:
            t = self.proj_out(t)
        return t + x


class Downsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)  # (B, C, H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)


class Stage(nn.Module):
    """One down, mid or up stage: ResNets with attentions placed by `attn_after` (rule 1)."""

    def __init__(self, resnets: list[ResnetBlock], attentions: list[Transformer2D],
                 attn_after: list[int]) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.attentions = nn.ModuleList(attentions)
        self.attn_after = attn_after  # attentions run after each ResNet
        self.skips = [0] * len(resnets)  # skips each ResNet concatenates (up stages)

    def run_resnet(self, i: int, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                   skips: list[torch.Tensor]) -> torch.Tensor:
        if self.skips[i]:
            x = torch.cat([x, *(skips.pop() for _ in range(self.skips[i]))], dim=1)
        x = self.resnets[i](x, temb)  # (B, C_stage, H, W)
        start = sum(self.attn_after[:i])
        for attn in self.attentions[start:start + self.attn_after[i]]:
            x = attn(x, context)
        return x


class DownStage(Stage):
    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                skips: list[torch.Tensor]) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = self.run_resnet(i, x, temb, context, skips)
            skips.append(x)
        for down in getattr(self, "downsamplers", []):
            x = down(x)  # (B, C, H/2, W/2)
            skips.append(x)
        return x


class MidStage(Stage):
    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if not self.resnets:  # a mid stage of attentions only
            for attn in self.attentions:
                x = attn(x, context)
        for i in range(len(self.resnets)):
            x = self.run_resnet(i, x, temb, context, [])
        return x


class UpStage(Stage):
    def forward(self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor,
                skips: list[torch.Tensor]) -> torch.Tensor:
        for i in range(len(self.resnets)):
            x = self.run_resnet(i, x, temb, context, skips)  # consumes its skips
        for up in getattr(self, "upsamplers", []):
            x = up(x)  # (B, C, 2H, 2W)
        return x


# ---------------------------------------------------------------- model


class EfficientUNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        chans, n = cfg.block_out_channels, cfg.num_stages
        temb = chans[0] * 4
        groups, eps = cfg.norm_num_groups, cfg.norm_eps

        def attns(count: int, ch: int, stage: int) -> list[Transformer2D]:
            return [Transformer2D(ch, cfg.heads(stage), cfg.cross_attention_dim, cfg)
                    for _ in range(count)]

        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.time_embedding = TimestepEmbedding(chans[0], temb)
        skip_ch = [chans[0]]  # channels of every skip the down path pushes, in order
        ch = chans[0]
        self.down_blocks = nn.ModuleList()
        for k in range(n):
            r, a = cfg.down_resnets[k], cfg.down_attentions[k]
            resnets = [ResnetBlock(ch if i == 0 else chans[k], chans[k], temb, groups, eps)
                       for i in range(r)]
            stage = DownStage(resnets, attns(a, chans[k], k), spread(a, r))
            ch = chans[k]
            skip_ch += [ch] * r
            if k < n - 1:
                stage.downsamplers = nn.ModuleList([Downsample(ch)])
                skip_ch.append(ch)
            self.down_blocks.append(stage)

        r, a = cfg.mid_resnets, cfg.mid_attentions
        gaps = [*spread(a, r - 1), 0] if r > 1 else [a] * r
        self.mid_block = MidStage([ResnetBlock(ch, ch, temb, groups, eps) for _ in range(r)],
                                  attns(a, ch, n - 1), gaps)

        self.up_blocks = nn.ModuleList()
        for j in range(n):
            k = n - 1 - j  # the down stage this one mirrors
            r, a = cfg.up_resnets[j], cfg.up_attentions[j]
            plan = skip_plan(r, cfg.down_resnets[k] + 1)
            resnets = []
            for i in range(r):
                taken = [skip_ch.pop() for _ in range(plan[i])]
                resnets.append(ResnetBlock(ch + sum(taken), chans[k], temb, groups, eps))
                ch = chans[k]
            stage = UpStage(resnets, attns(a, ch, k), spread(a, r))
            stage.skips = plan
            if j < n - 1:
                stage.upsamplers = nn.ModuleList([Upsample(ch)])
            self.up_blocks.append(stage)

        self.conv_norm_out = nn.GroupNorm(groups, chans[0], eps=eps)
        self.conv_out = nn.Conv2d(chans[0], cfg.out_channels, 3, padding=1)
        # Weights keep PyTorch's default init, as diffusers' constructor does: nothing is zeroed,
        # so a random-weight model gives non-trivial outputs for export parity checks.

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.forward_time_features(sample, self.time_features(timestep),
                                          encoder_hidden_states)

    def time_features(self, timestep: torch.Tensor) -> torch.Tensor:
        """t (B,) -> the (B, C0) sinusoids the time MLP reads."""
        cfg = self.config
        return timestep_embedding(timestep, cfg.block_out_channels[0], cfg.flip_sin_to_cos,
                                  cfg.freq_shift)

    def forward_time_features(self, sample: torch.Tensor, time_features: torch.Tensor,
                              encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """The UNet from the sinusoidal time features on (a consumer that computes them
        outside the graph: litert-torch's SD pipeline); (1, C0) features serve the whole batch."""
        temb = self.time_embedding(time_features.to(sample.dtype))  # (B or 1, 4 C0)
        ctx = encoder_hidden_states  # (B, 77, D)
        x = self.conv_in(sample)  # (B, C0, h, w)
        skips = [x]
        for block in self.down_blocks:
            x = block(x, temb, ctx, skips)  # (B, C_k, h/2^k, w/2^k), pushes its skips
        x = self.mid_block(x, temb, ctx)  # (B, C_last, h/2^(n-1), w/2^(n-1))
        for block in self.up_blocks:
            x = block(x, temb, ctx, skips)  # pops its skips; (B, C_k, ...) upsampled
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, out_channels, h, w)

    def example_inputs(self, batch: int = 1, seed: int = 0, t: float = 500.0,
                       image_size: int | None = None) -> tuple[torch.Tensor, ...]:
        """The one input factory that export, validation and timing all use."""
        cfg = self.config
        size = image_size or cfg.sample_size
        g = torch.Generator().manual_seed(seed)
        sample = torch.randn(batch, cfg.in_channels, size, size, generator=g)
        ctx = torch.randn(batch, cfg.context_len, cfg.cross_attention_dim, generator=g)
        return sample, torch.full((batch,), float(t)), ctx


def io_spec(cfg: UNetConfig, image_size: int | None = None) -> ModelIO:
    """The artifact signature; batch is dynamic so classifier-free guidance can run 2B at once."""
    size = image_size or cfg.sample_size
    return ModelIO(
        inputs=(
            TensorSpec("sample", ("batch", cfg.in_channels, size, size), "float32",
                       "noisy latents x_t, NCHW"),
            TensorSpec("timestep", ("batch",), "float32", "discrete DDPM timestep t",
                       value_range=(0.0, 1000.0)),
            TensorSpec("encoder_hidden_states", ("batch", cfg.context_len,
                                                 cfg.cross_attention_dim), "float32",
                       "CLIP text-encoder last hidden states; the empty prompt's = unconditional"),
        ),
        outputs=(TensorSpec("noise_pred", ("batch", cfg.out_channels, size, size), "float32",
                            "predicted noise epsilon, NCHW"),),
    )


def component_entry(cfg: UNetConfig, recipe: Any, image_size: int) -> dict[str, Any]:
    """The UNet's part of the manifest entry. With no text encoder shipped, end-to-end sampling
    uses the seeded Gaussian context stand-in (generate.conditions)."""
    return {
        "name": "unet",
        "sample_shape": [cfg.in_channels, image_size, image_size],
        "layouts": {"sample": "NCHW", "encoder_hidden_states": "(batch, tokens, channels)",
                    "noise_pred": "NCHW"},
        "latent_scaling_factor": cfg.latent_scaling_factor,
        "output_normalization": (f"latents: divide by latent_scaling_factor "
                                 f"{cfg.latent_scaling_factor} and feed the VAE decoder"),
        "value_ranges": {"timestep": [0.0, 1000.0], "sample": "~N(0, 1) at t=999",
                         "encoder_hidden_states": "CLIP ViT-L/14 last hidden state"},
        "conditioning": {"kind": "context", "shape": [cfg.context_len, cfg.cross_attention_dim],
                         "seed": recipe.sampler.seed,
                         "note": "seeded Gaussian stand-in for text embeddings; zeros are the "
                                 "null context (real apps feed the text encoder's states)"},
    }


# Named variants: the single source of each published configuration (recipes and the device
# estimator refer to them by name).
VARIANTS: dict[str, UNetConfig] = {
    "sd15": UNetConfig(),  # SD-1.5: 859,520,964 parameters
    # SnapFusion's efficient UNet (arXiv 2306.00980, Table 3): cross-attention / ResNet blocks per
    # stage Down-1 0/2, Down-2 2/2, Down-3 2/1, lowest resolution 1/4 (SD: 1/7), Up-1 3/2,
    # Up-2 6/3, Up-3 0/3. The lowest-resolution 4 ResNets are split Down-4 1 + mid 1 + Up-0 2 (Up-0
    # must take Down-4's skips); the 6 attentions sit in Up-2 as in the talk. 682,609,924 params
    # against the paper's 848M: Table 3 gives block counts only (see recipes/unet-snapfusion.toml).
    "snapfusion": UNetConfig(down_resnets=(2, 2, 1, 1), down_attentions=(0, 2, 2, 0),
                             mid_resnets=1, mid_attentions=1, up_resnets=(2, 2, 3, 3),
                             up_attentions=(0, 3, 6, 0)),
    # a few-MB shape for tests and quick runs
    "unet-tiny": UNetConfig(block_out_channels=(16, 32), down_resnets=(2, 1),
                            down_attentions=(0, 2), mid_resnets=1, mid_attentions=1,
                            up_resnets=(2, 3), up_attentions=(4, 0), cross_attention_dim=16,
                            attention_head_dim=2, norm_num_groups=8, sample_size=8,
                            context_len=8),
}
