"""STOIC: a fixed-size reusable transformer denoiser (arXiv 2411.06119).

Structure: initial convolution block (stride S) -> N identical blocks of width L -> decoder back to
(C, H, W). No tokenizer and no positional embedding: the overlapping, zero-padded stem convolution
gives the blocks their position information. The paper fixes the structure, not every detail; each
choice below is a config field with a documented default.

The model predicts the noise epsilon. Inputs: x (B, C, H, W), t (B,) float32 on the sampler's model
time scale (t * 1000, see sampling.VPSchedule), and, when conditional, y (B,) int64 class labels
(index `num_classes` is the null label for classifier-free guidance) or context (B, T, D).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobilegen.errors import ConfigError
from mobilegen.models.attention import AttentionKernel, TokenAttention, attend
from mobilegen.models.bounds import first_problem
from mobilegen.signature import ModelIO, TensorSpec

Conditioning = Literal["none", "class", "context"]


# (min, max) of each numeric config key (models/bounds.py)
STOIC_BOUNDS: dict[str, tuple[float, float]] = {
    "in_channels": (1, 64), "image_size": (1, 4096), "stride": (1, 2), "stem_kernel": (1, 15),
    "stem_convs": (0, 16), "depth": (1, 256), "width": (1, 16384), "heads": (1, 256),
    "mlp_ratio": (0.25, 16.0), "time_freq_dim": (2, 16384), "num_classes": (0, 1_000_000),
    "context_dim": (1, 16384), "context_len": (1, 4096),
}


STOIC_CHOICES: dict[str, tuple[str, ...]] = {
    "time_injection": ("add", "adaln"), "conditioning": ("none", "class", "context"),
    "decoder": ("slicing", "linear"), "activation": ("gelu", "gelu_tanh", "silu"),
}


@dataclass(frozen=True)
class StoicConfig:
    in_channels: int = 3  # 3 for pixels, 4 for SD latents, 1 for grey digits
    image_size: int = 32  # default H = W used for examples, MAC counts and export
    stride: int = 2  # S: the stem's stride; tokens = (H/S) * (W/S)
    stem_kernel: int = 3  # overlapping kernel (> stride) with zero padding k // 2
    stem_convs: int = 1  # extra 3x3 convs (with SiLU) after the strided one
    depth: int = 12  # N identical blocks
    width: int = 512  # L
    heads: int = 8
    mlp_ratio: float = 4.0
    time_injection: Literal["add", "adaln"] = "add"  # add: one shared embedding added per block
    time_freq_dim: int = 256  # sinusoidal features before the time MLP
    conditioning: Conditioning = "none"
    num_classes: int = 0  # for "class"; the null label is index num_classes
    context_dim: int = 768  # for "context" (cross-attention in every block)
    context_len: int = 77
    # the paper's "context embedding": the context's mean over its tokens, projected to L and
    # added to the time embedding, so the text steers every block's modulation as a class label
    # does; cross-attention alone left the digits STOIC blind to the prompt (docs/training.md)
    context_pool: bool = False
    decoder: Literal["slicing", "linear"] = "slicing"
    activation: Literal["gelu", "gelu_tanh", "silu"] = "gelu"

    def __post_init__(self) -> None:
        bad = first_problem(self, STOIC_BOUNDS, STOIC_CHOICES)  # first: later checks divide
        if bad:
            raise ConfigError(f"invalid STOIC config: {bad}")
        problems = []
        if self.stride not in (1, 2):
            problems.append(f"key 'stride' must be 1 or 2, found {self.stride}")
        if (problem := self.size_problem(self.image_size)) is not None:
            problems.append(f"key 'image_size': {problem}")
        if self.width % self.heads:
            problems.append(f"width {self.width} is not divisible by heads {self.heads}")
        if self.decoder == "slicing" and self.stride**2 * self.in_channels > self.width:
            problems.append("decoder 'slicing' needs width >= stride^2 * in_channels")
        if not isinstance(self.context_pool, bool):
            problems.append(
                f"key 'context_pool' must be true or false, found {self.context_pool!r}")
        elif self.context_pool and self.conditioning != "context":
            problems.append("key 'context_pool' needs conditioning 'context'")
        if self.conditioning == "class" and self.num_classes < 1:
            problems.append("conditioning 'class' needs num_classes >= 1")
        if problems:
            raise ConfigError("invalid STOIC config: " + "; ".join(problems))

    def size_problem(self, size: int) -> str | None:
        """Why `size` (pixels per side) cannot be fed to this model, or None."""
        if size < self.stride or size % self.stride:
            return f"{size} is not a positive multiple of the model's stride {self.stride}"
        return None

    @property
    def tokens(self) -> int:
        return (self.image_size // self.stride) ** 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StoicConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown STOIC config key '{unknown[0]}' (known: {sorted(known)})")
        return cls(**d)


# ---------------------------------------------------------------- helpers


def timestep_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of t (B,) -> (B, dim); cos first, as in DiT/diffusers."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :].to(t.device)  # (B, half)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def make_activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "gelu_tanh":
        return nn.GELU(approximate="tanh")
    return nn.SiLU()


# ---------------------------------------------------------------- blocks


class Attention(TokenAttention):
    """Multi-head attention; self-attention when context is None. Kernel is an explicit field."""

    def __init__(self, dim: int, heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.heads = heads
        self.kernel = AttentionKernel.SOFTMAX
        self.relu_scale = 1.0
        kv_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(kv_dim, dim)
        self.to_v = nn.Linear(kv_dim, dim)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        src = x if context is None else context
        q = self.to_q(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, h, T, d/h)
        k = self.to_k(src).view(b, src.shape[1], self.heads, d // self.heads).transpose(1, 2)
        v = self.to_v(src).view(b, src.shape[1], self.heads, d // self.heads).transpose(1, 2)
        out = attend(q, k, v, self.kernel, self.relu_scale)  # (B, h, T, d/h)
        return self.to_out(out.transpose(1, 2).reshape(b, t, d))  # (B, T, L)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_activation(activation)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class StoicBlock(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention, MLP; all of width L."""

    def __init__(self, cfg: StoicConfig) -> None:
        super().__init__()
        dim = cfg.width
        adaln = cfg.time_injection == "adaln"
        # adaLN supplies its own scale/shift, so its norms carry no affine parameters.
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=not adaln, eps=1e-6)
        self.attn = Attention(dim, cfg.heads)
        self.cross = cfg.conditioning == "context"
        if self.cross:
            self.norm_cross = nn.LayerNorm(dim, eps=1e-6)
            self.cross_attn = Attention(dim, cfg.heads, context_dim=cfg.context_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=not adaln, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), cfg.activation)
        self.adaln = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim)) if adaln else None

    def forward(
        self, x: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None
    ) -> torch.Tensor:
        if self.adaln is None:
            x = x + temb[:, None, :]  # (B, T, L): time added at every block's input
            x = x + self.attn(self.norm1(x))
            if self.cross:
                x = x + self.cross_attn(self.norm_cross(x), context)
            return x + self.mlp(self.norm2(x))
        mod = self.adaln(temb)[:, None, :].chunk(6, dim=-1)  # 6 x (B, 1, L)
        shift1, scale1, gate1, shift2, scale2, gate2 = mod
        x = x + gate1 * self.attn(self.norm1(x) * (1 + scale1) + shift1)
        if self.cross:
            x = x + self.cross_attn(self.norm_cross(x), context)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


# ---------------------------------------------------------------- model


class Stoic(nn.Module):
    def __init__(self, cfg: StoicConfig) -> None:
        super().__init__()
        self.config = cfg
        L, S, C = cfg.width, cfg.stride, cfg.in_channels
        stem: list[nn.Module] = [nn.Conv2d(C, L, cfg.stem_kernel, S, cfg.stem_kernel // 2)]
        for _ in range(cfg.stem_convs):
            stem += [nn.SiLU(), nn.Conv2d(L, L, 3, 1, 1)]
        self.stem = nn.Sequential(*stem)
        self.time_mlp = nn.Sequential(
            nn.Linear(cfg.time_freq_dim, L), nn.SiLU(), nn.Linear(L, L)
        )
        if cfg.conditioning == "class":
            self.label_embed = nn.Embedding(cfg.num_classes + 1, L)  # last row: null label
        if cfg.context_pool:
            self.context_embed = nn.Linear(cfg.context_dim, L)
        self.blocks = nn.ModuleList(StoicBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(L, eps=1e-6)
        if cfg.decoder == "linear":
            self.decoder_proj = nn.Linear(L, S * S * C)
        self.conv_out = nn.Conv2d(C, C, 3, 1, 1)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():  # transformer-style init for every projection
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:
            if block.adaln is not None:  # adaLN-Zero: every block starts as the identity
                nn.init.zeros_(block.adaln[-1].weight)
                nn.init.zeros_(block.adaln[-1].bias)
        if hasattr(self, "label_embed"):
            nn.init.normal_(self.label_embed.weight, std=0.02)
        nn.init.zeros_(self.conv_out.weight)  # output starts at zero: a calm first loss
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None
    ) -> torch.Tensor:
        cfg = self.config
        b, c, h, w = x.shape
        S = cfg.stride
        temb = self.time_mlp(timestep_features(t, cfg.time_freq_dim))  # (B, L)
        context = None
        if cfg.conditioning == "class":
            temb = temb + self.label_embed(cond)  # (B, L)
        elif cfg.conditioning == "context":
            context = cond  # (B, T, D)
            if cfg.context_pool:
                temb = temb + self.context_embed(context.mean(dim=1))  # (B, L)
        tokens = self.stem(x)  # (B, L, H/S, W/S)
        tokens = tokens.flatten(2).transpose(1, 2)  # (B, T, L)
        for block in self.blocks:
            tokens = block(tokens, temb, context)  # (B, T, L)
        tokens = self.norm_out(tokens)
        # (B, T, S^2 C): "slicing" keeps the first channels, "linear" projects
        tokens = tokens[..., : S * S * c] if cfg.decoder == "slicing" else self.decoder_proj(tokens)
        grid = tokens.transpose(1, 2).reshape(b, S * S * c, h // S, w // S)
        return self.conv_out(F.pixel_shuffle(grid, S))  # (B, C, H, W)

    def example_inputs(
        self, batch: int = 1, seed: int = 0, t: float = 500.0, image_size: int | None = None
    ) -> tuple[torch.Tensor, ...]:
        """The one input factory that export, validation and timing all use."""
        cfg = self.config
        size = image_size or cfg.image_size
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
        t_in = torch.full((batch,), float(t))
        if cfg.conditioning == "class":
            return x, t_in, torch.arange(batch, dtype=torch.int64) % (cfg.num_classes + 1)
        if cfg.conditioning == "context":
            ctx = torch.randn(batch, cfg.context_len, cfg.context_dim, generator=g)
            return x, t_in, ctx
        return x, t_in


# ---------------------------------------------------------------- named variants


def _paper(stride: int, depth: int, width: int) -> StoicConfig:
    return StoicConfig(stride=stride, depth=depth, width=width, heads=width // 64)


VARIANTS: dict[str, StoicConfig] = {
    f"stoic-s{s}-n{n}-l{w}": _paper(s, n, w)
    for s in (1, 2)
    for n in (12, 16, 32)
    for w in (512, 768)
}
VARIANTS["stoic-s2-n12-l512-latent-text"] = StoicConfig(
    in_channels=4, stride=2, depth=12, width=512, heads=8, conditioning="context"
)
VARIANTS["stoic-tiny"] = StoicConfig(
    in_channels=1, image_size=8, stride=2, depth=2, width=32, heads=2, time_freq_dim=32
)


def io_spec(cfg: StoicConfig, image_size: int | None = None) -> ModelIO:
    """The artifact signature; batch is dynamic so classifier-free guidance can run 2B at once."""
    size = image_size or cfg.image_size
    image = ("batch", cfg.in_channels, size, size)
    inputs = [
        TensorSpec("x", image, "float32", "noisy sample x_t = alpha_t*x0 + sigma_t*noise, NCHW"),
        TensorSpec(
            "t", ("batch",), "float32", "model time: continuous t in [0, 1] times 1000",
            value_range=(0.0, 1000.0),
        ),
    ]
    if cfg.conditioning == "class":
        inputs.append(
            TensorSpec(
                "y", ("batch",), "int64",
                f"class label 0..{cfg.num_classes - 1}; {cfg.num_classes} = null (unconditional)",
                value_range=(0, cfg.num_classes),
            )
        )
    elif cfg.conditioning == "context":
        inputs.append(
            TensorSpec(
                "context", ("batch", cfg.context_len, cfg.context_dim), "float32",
                "context embeddings (e.g. CLIP text states); zeros = null (unconditional)",
            )
        )
    outputs = [TensorSpec("eps", image, "float32", "predicted noise epsilon, NCHW")]
    return ModelIO(tuple(inputs), tuple(outputs))


def component_entry(cfg: StoicConfig, recipe: Any, image_size: int) -> dict[str, Any]:
    """STOIC's part of the manifest entry: conditioning as the sampler feeds it, image layout."""
    s = recipe.sampler
    if cfg.conditioning == "class":
        labels = s.labels if s.labels is not None else list(range(cfg.num_classes))
        cond = {"kind": "class", "labels": labels, "null_label": cfg.num_classes}
    elif cfg.conditioning == "context":
        cond = {"kind": "context", "shape": [cfg.context_len, cfg.context_dim], "seed": s.seed,
                "note": "seeded Gaussian stand-in for text embeddings; zeros are the null context"}
    else:
        cond = {"kind": "none"}
    return {
        "name": "denoiser",
        "sample_shape": [cfg.in_channels, image_size, image_size],
        "output_normalization": "images in [-1, 1]: pixel = round((x + 1) * 127.5), clipped",
        "conditioning": cond,
    }
