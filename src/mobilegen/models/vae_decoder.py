"""SD image decoder (the decoder half of diffusers' AutoencoderKL), with per-layer widths.

latent (B, latent_channels, h, w) -> image (B, 3, 8h, 8w), roughly in [-1, 1]. The forward is
`AutoencoderKL.decode(z).sample`: post_quant_conv, then the decoder. It does not scale the latent:
callers pass `latents / latent_scaling_factor` (SD-1.x: 0.18215), the value the manifest carries.

Parameter names are the AutoencoderKL names (`post_quant_conv.*`, `decoder.*`), so the decoder part
of a diffusers state dict loads as it is. Every width is a config field read from tensor shapes
(`VAEDecoderConfig.from_state_dict`), so a channel-pruned decoder (SnapFusion: 50M -> 13M params)
loads without a hand-written config, including ResNets whose inner width (conv1's output) differs
from their input and output widths.

GroupNorm groups cannot be read from shapes (a norm's weight has one entry per channel), so every
norm's group count is a config field and travels with the config. When not given it follows one
rule: the largest divisor of the width that is <= 32 (32 for every unpruned SD width).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobilegen.errors import CheckpointError, ConfigError
from mobilegen.models.attention import AttentionKernel, SpatialAttention, attend
from mobilegen.models.bounds import first_problem, out_of_range
from mobilegen.signature import ModelIO, TensorSpec


def default_groups(width: int, max_groups: int = 32) -> int:
    """GroupNorm groups for a width: the largest divisor of `width` that is <= max_groups."""
    return next(g for g in range(min(width, max_groups), 0, -1) if width % g == 0)


@dataclass(frozen=True)
class ResnetWidths:
    """One ResNet: norm1(in) conv1 in->mid, norm2(mid) conv2 mid->out, 1x1 shortcut if in != out."""

    in_channels: int
    mid_channels: int
    out_channels: int
    groups1: int | None = None  # norm1's groups; None: default_groups(in_channels)
    groups2: int | None = None  # norm2's groups; None: default_groups(mid_channels)

    def __post_init__(self) -> None:
        bad = out_of_range([(k, getattr(self, k)) for k in ("in_channels", "mid_channels",
                                                             "out_channels")], 1, 16384)
        bad = bad or out_of_range([(k, v) for k in ("groups1", "groups2")
                                   if (v := getattr(self, k)) is not None], 1, 16384)
        if bad:
            raise ConfigError(f"invalid VAE decoder ResNet widths: {bad}")
        if self.groups1 is None:
            object.__setattr__(self, "groups1", default_groups(self.in_channels))
        if self.groups2 is None:
            object.__setattr__(self, "groups2", default_groups(self.mid_channels))
        for groups, width in ((self.groups1, self.in_channels), (self.groups2, self.mid_channels)):
            if groups < 1 or width % groups:
                raise ConfigError(f"GroupNorm groups {groups} do not divide width {width} "
                                  f"in {self}")

    @classmethod
    def of(cls, c_in: int, c_mid: int, c_out: int, max_groups: int = 32) -> ResnetWidths:
        return cls(c_in, c_mid, c_out, default_groups(c_in, max_groups),
                   default_groups(c_mid, max_groups))


def _resnet_from(d: Any, where: str) -> ResnetWidths:
    if isinstance(d, ResnetWidths):
        return d
    if not isinstance(d, Mapping):
        raise ConfigError(f"VAE decoder config '{where}': expected a table of widths, found {d!r}")
    known = {f.name for f in dataclasses.fields(ResnetWidths)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown VAE decoder config key '{where}.{unknown[0]}' "
                          f"(known: {sorted(known)})")
    return ResnetWidths(**d)


# (min, max) of each scalar config key (models/bounds.py)
VAE_BOUNDS: dict[str, tuple[float, float]] = {
    "mid_attention_channels": (0, 16384), "latent_channels": (1, 64), "out_channels": (1, 64),
    "norm_eps": (0.0, 1.0), "latent_scaling_factor": (1e-6, 1e6),
    "latent_shift_factor": (-1e6, 1e6), "latent_size": (1, 4096),
}


@dataclass(frozen=True)
class VAEDecoderConfig:
    mid_resnets: tuple[ResnetWidths, ...]  # the mid block's ResNets (SD: 2)
    mid_attention_channels: int  # to_q/to_k/to_v width of the mid attention; 0 = no attention
    up_resnets: tuple[tuple[ResnetWidths, ...], ...]  # per up block (deepest first)
    upsample_channels: tuple[int, ...]  # out width of each up block's upsampler conv; 0 = none
    latent_channels: int = 4
    out_channels: int = 3
    use_post_quant_conv: bool = True
    mid_attention_groups: int | None = None  # None: default_groups(mid width)
    norm_out_groups: int | None = None  # None: default_groups(final width)
    norm_eps: float = 1e-6
    latent_scaling_factor: float = 0.18215
    latent_shift_factor: float = 0.0  # SD-1.x/2.x: 0; decode(latents / scale + shift)
    latent_size: int = 64  # latent h = w for example inputs and export

    def __post_init__(self) -> None:
        bad = first_problem(self, VAE_BOUNDS) or out_of_range(
            [(f"upsample_channels[{i}]", u) for i, u in enumerate(self.upsample_channels)],
            0, 16384)
        if bad:  # first: the checks below divide by these
            raise ConfigError(f"invalid VAE decoder config: {bad}")
        mid = tuple(_resnet_from(r, f"mid_resnets[{i}]") for i, r in enumerate(self.mid_resnets))
        up = tuple(tuple(_resnet_from(r, f"up_resnets[{b}][{i}]") for i, r in enumerate(blk))
                   for b, blk in enumerate(self.up_resnets))
        object.__setattr__(self, "mid_resnets", mid)
        object.__setattr__(self, "up_resnets", up)
        object.__setattr__(self, "upsample_channels", tuple(self.upsample_channels))
        problems = []
        if not mid or not up or any(not blk for blk in up):
            problems.append("needs a mid block and up blocks, each with at least one ResNet")
        if len(self.upsample_channels) != len(up):
            problems.append(f"upsample_channels has {len(self.upsample_channels)} entries, "
                            f"expected {len(up)} (one per up block)")
        # The widths must chain: each layer reads what the one before it writes; the last
        # ResNet of up block b is followed by its upsampler conv, which may change the width.
        ch, where = (mid[0].in_channels, "conv_in") if mid else (0, "conv_in")
        chain = [(f"mid_resnets[{i}]", r, None) for i, r in enumerate(mid)]
        for b, blk in enumerate(up):
            chain += [(f"up_resnets[{b}][{i}]", r, b if i == len(blk) - 1 else None)
                      for i, r in enumerate(blk)]
        for name, r, block in chain:
            if r.in_channels != ch:
                problems.append(f"{name}.in_channels is {r.in_channels}, expected {ch} ({where})")
            ch, where = r.out_channels, f"{name}.out_channels"
            if block is not None and block < len(self.upsample_channels) and \
                    self.upsample_channels[block]:
                ch, where = self.upsample_channels[block], f"upsample_channels[{block}]"
        if problems:
            raise ConfigError("invalid VAE decoder config: " + "; ".join(problems))
        if self.mid_attention_groups is None:
            object.__setattr__(self, "mid_attention_groups", default_groups(mid[0].out_channels))
        if self.norm_out_groups is None:
            object.__setattr__(self, "norm_out_groups", default_groups(self.final_channels))
        for name, groups, width in (  # 0 or negative groups are refused here too
            ("mid_attention_groups", self.mid_attention_groups, mid[0].out_channels),
            ("norm_out_groups", self.norm_out_groups, self.final_channels),
        ):
            if groups < 1 or width % groups:
                raise ConfigError(f"invalid VAE decoder config: {name} {groups} does not divide "
                                  f"width {width}")

    @property
    def image_size(self) -> int:  # the name the pipeline uses for the default (latent) size
        return self.latent_size

    @property
    def final_channels(self) -> int:
        last = self.up_resnets[-1][-1].out_channels
        return self.upsample_channels[-1] or last

    @classmethod
    def uniform(cls, block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
                layers_per_block: int = 2, norm_num_groups: int = 32,
                **kwargs: Any) -> VAEDecoderConfig:
        """diffusers' Decoder shape from its block widths; the defaults are SD's decoder."""
        bad = (out_of_range([("norm_num_groups", norm_num_groups)], 1, 1024)
               or out_of_range([("layers_per_block", layers_per_block)], 0, 64)
               or (None if block_out_channels else "key 'block_out_channels' is empty")
               or out_of_range([(f"block_out_channels[{i}]", c)
                                for i, c in enumerate(block_out_channels)], 1, 16384))
        if bad:
            raise ConfigError(f"invalid VAE decoder config: {bad}")
        rev = list(reversed(block_out_channels))

        def of(c_in: int, c_out: int) -> ResnetWidths:
            return ResnetWidths.of(c_in, c_out, c_out, norm_num_groups)

        up, ch = [], rev[0]
        for out in rev:
            up.append(tuple(of(ch if i == 0 else out, out) for i in range(layers_per_block + 1)))
            ch = out
        return cls(
            mid_resnets=(of(rev[0], rev[0]), of(rev[0], rev[0])),
            mid_attention_channels=rev[0],
            up_resnets=tuple(up),
            upsample_channels=(*rev[:-1], 0),
            mid_attention_groups=default_groups(rev[0], norm_num_groups),
            norm_out_groups=default_groups(rev[-1], norm_num_groups),
            **kwargs,
        )

    @classmethod
    def from_state_dict(cls, sd: Mapping[str, torch.Tensor], norm_num_groups: int = 32,
                        source: str = "state dict", **kwargs: Any) -> VAEDecoderConfig:
        """Every width from tensor shapes (keys as in AutoencoderKL: `decoder.*`)."""

        def shape(key: str) -> tuple[int, ...]:
            if key not in sd:
                raise CheckpointError(f"{source}: missing tensor '{key}' (needed for the "
                                      "decoder's widths)")
            return tuple(sd[key].shape)

        def indices(prefix: str) -> list[int]:
            pat = re.compile(re.escape(prefix) + r"(\d+)\.")
            return sorted({int(m.group(1)) for k in sd if (m := pat.match(k))})

        def resnet(prefix: str) -> ResnetWidths:
            mid, c_in = shape(prefix + "conv1.weight")[:2]
            return ResnetWidths.of(c_in, mid, shape(prefix + "conv2.weight")[0], norm_num_groups)

        mid = tuple(resnet(f"decoder.mid_block.resnets.{i}.")
                    for i in indices("decoder.mid_block.resnets."))
        q_key = "decoder.mid_block.attentions.0.to_q.weight"
        attn = shape(q_key)[0] if q_key in sd else 0
        blocks = indices("decoder.up_blocks.")
        up = tuple(tuple(resnet(f"decoder.up_blocks.{b}.resnets.{i}.")
                         for i in indices(f"decoder.up_blocks.{b}.resnets.")) for b in blocks)
        ups = tuple(shape(f"decoder.up_blocks.{b}.upsamplers.0.conv.weight")[0]
                    if f"decoder.up_blocks.{b}.upsamplers.0.conv.weight" in sd else 0
                    for b in blocks)
        if not mid:
            raise CheckpointError(f"{source}: no 'decoder.mid_block.resnets.*' tensors: "
                                  "not a decoder state dict")
        final = shape("decoder.conv_out.weight")
        kwargs.setdefault("latent_channels", shape("decoder.conv_in.weight")[1])
        try:
            return cls(
                mid_resnets=mid,
                mid_attention_channels=attn,
                up_resnets=up,
                upsample_channels=ups,
                out_channels=final[0],
                use_post_quant_conv="post_quant_conv.weight" in sd,
                mid_attention_groups=default_groups(mid[0].out_channels, norm_num_groups),
                norm_out_groups=default_groups(final[1], norm_num_groups),
                **kwargs,
            )
        except ConfigError as err:  # shapes that do not chain: the checkpoint is at fault
            raise CheckpointError(f"{source}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["mid_resnets"] = [dict(r) for r in d["mid_resnets"]]
        d["up_resnets"] = [[dict(r) for r in blk] for blk in d["up_resnets"]]
        d["upsample_channels"] = list(d["upsample_channels"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEDecoderConfig:
        """Accepts a recipe's [model.config] table or `to_dict()` output. A table with
        `block_out_channels` (and optionally `layers_per_block`, `norm_num_groups`) is diffusers'
        uniform shape, the short form recipes use; every other key is a config field."""
        if "block_out_channels" in d:
            d = dict(d)
            shape = {k: d.pop(k) for k in ("block_out_channels", "layers_per_block",
                                           "norm_num_groups") if k in d}
            shape["block_out_channels"] = tuple(shape["block_out_channels"])
            return cls.from_dict(cls.uniform(**shape).to_dict() | d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown VAE decoder config key '{unknown[0]}' "
                              f"(known: {sorted(known)})")
        try:
            return cls(**d)
        except TypeError as err:
            raise ConfigError(f"invalid VAE decoder config value: {err}") from None


# ---------------------------------------------------------------- blocks


class ResnetBlock(nn.Module):
    """diffusers ResnetBlock2D without time input; the inner (mid) width may differ."""

    def __init__(self, w: ResnetWidths, eps: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(w.groups1, w.in_channels, eps=eps)
        self.conv1 = nn.Conv2d(w.in_channels, w.mid_channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(w.groups2, w.mid_channels, eps=eps)
        self.conv2 = nn.Conv2d(w.mid_channels, w.out_channels, 3, padding=1)
        self.conv_shortcut = (nn.Conv2d(w.in_channels, w.out_channels, 1)
                              if w.in_channels != w.out_channels else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, mid, H, W)
        h = self.conv2(F.silu(self.norm2(h)))  # (B, out, H, W)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class SpatialSelfAttention(SpatialAttention):
    """diffusers' VAE mid attention: one head over all H·W positions, residual added."""

    def __init__(self, ch: int, inner: int, groups: int, eps: float) -> None:
        super().__init__()
        self.kernel = AttentionKernel.SOFTMAX
        self.relu_scale = 1.0
        self.group_norm = nn.GroupNorm(groups, ch, eps=eps)
        self.to_q = nn.Linear(ch, inner)
        self.to_k = nn.Linear(ch, inner)
        self.to_v = nn.Linear(ch, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, ch)])  # index 0: diffusers' `to_out.0`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        t = self.group_norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        q = self.to_q(t)[:, None]  # (B, 1, HW, inner)
        k = self.to_k(t)[:, None]
        v = self.to_v(t)[:, None]
        out = attend(q, k, v, self.kernel, self.relu_scale)[:, 0]  # (B, HW, inner)
        out = self.to_out[0](out).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return out + x


class Upsample(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))  # (B, C', 2H, 2W)


class MidBlock(nn.Module):
    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(w, cfg.norm_eps) for w in cfg.mid_resnets)
        ch = cfg.mid_resnets[0].out_channels
        self.attentions = nn.ModuleList(
            [SpatialSelfAttention(ch, cfg.mid_attention_channels, cfg.mid_attention_groups,
                                  cfg.norm_eps)] if cfg.mid_attention_channels else []
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)  # diffusers' order: resnet, attention, the other resnets
        for attn in self.attentions:
            x = attn(x)
        for resnet in self.resnets[1:]:
            x = resnet(x)
        return x


class UpBlock(nn.Module):
    def __init__(self, widths: tuple[ResnetWidths, ...], upsample: int, eps: float) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(w, eps) for w in widths)
        last = widths[-1].out_channels
        self.upsamplers = nn.ModuleList([Upsample(last, upsample)] if upsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for up in self.upsamplers:
            x = up(x)  # (B, C', 2H, 2W)
        return x


class Decoder(nn.Module):
    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.latent_channels, cfg.mid_resnets[0].in_channels, 3, padding=1)
        self.mid_block = MidBlock(cfg)
        self.up_blocks = nn.ModuleList(
            UpBlock(blk, up, cfg.norm_eps)
            for blk, up in zip(cfg.up_resnets, cfg.upsample_channels, strict=True)
        )
        self.conv_norm_out = nn.GroupNorm(cfg.norm_out_groups, cfg.final_channels, eps=cfg.norm_eps)
        self.conv_out = nn.Conv2d(cfg.final_channels, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)  # (B, C_mid, h, w)
        x = self.mid_block(x)  # (B, C_mid, h, w)
        for block in self.up_blocks:
            x = block(x)  # (B, C_b, ...) upsampled 2x except the last block
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 3, 8h, 8w) for SD


# ---------------------------------------------------------------- model


class VAEDecoder(nn.Module):
    def __init__(self, cfg: VAEDecoderConfig) -> None:
        super().__init__()
        self.config = cfg
        c = cfg.latent_channels
        self.post_quant_conv = nn.Conv2d(c, c, 1) if cfg.use_post_quant_conv else None
        self.decoder = Decoder(cfg)
        # PyTorch's default init everywhere, as diffusers' constructor does.

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        z = latent if self.post_quant_conv is None else self.post_quant_conv(latent)
        return self.decoder(z)  # (B, 3, 8h, 8w)

    def example_inputs(self, batch: int = 1, seed: int = 0, t: float = 0.0,
                       image_size: int | None = None) -> tuple[torch.Tensor, ...]:
        """The one input factory that export, validation and timing all use (`t` is unused)."""
        cfg = self.config
        size = image_size or cfg.latent_size
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(batch, cfg.latent_channels, size, size, generator=g),)


def io_spec(cfg: VAEDecoderConfig, image_size: int | None = None) -> ModelIO:
    size = image_size or cfg.latent_size
    scale = 2 ** sum(1 for u in cfg.upsample_channels if u)
    return ModelIO(
        inputs=(TensorSpec("latent", ("batch", cfg.latent_channels, size, size), "float32",
                           "latents already divided by latent_scaling_factor, NCHW",
                           extra={"latent_scaling_factor": cfg.latent_scaling_factor,
                                  "latent_shift_factor": cfg.latent_shift_factor}),),
        outputs=(TensorSpec("image", ("batch", cfg.out_channels, size * scale, size * scale),
                            "float32", "decoded image, roughly [-1, 1]; (x + 1) / 2 for [0, 1]"),),
    )


def component_entry(cfg: VAEDecoderConfig, recipe: Any, image_size: int) -> dict[str, Any]:
    """The decoder's part of the manifest entry; no conditioning, so no sampler is attached."""
    scale = 2 ** sum(1 for u in cfg.upsample_channels if u)
    return {
        "name": "vae_decoder",
        "sample_shape": [cfg.latent_channels, image_size, image_size],
        "image_shape": [cfg.out_channels, image_size * scale, image_size * scale],
        "layouts": {"latent": "NCHW", "image": "NCHW, RGB"},
        "latent_scaling_factor": cfg.latent_scaling_factor,
        "latent_shift_factor": cfg.latent_shift_factor,
        "input_normalization": (f"latent = denoised_latents / {cfg.latent_scaling_factor} + "
                                f"{cfg.latent_shift_factor}"),
        "output_normalization": "image roughly in [-1, 1]: pixel = round((x + 1) * 127.5), "
                                "clipped",
        "value_ranges": {"image": [-1.0, 1.0]},
    }


# Named variants: the single source of each published configuration (recipes and the device
# estimator refer to them by name). A pruned checkpoint carries its own per-layer widths.
VARIANTS: dict[str, VAEDecoderConfig] = {
    "sd-vae": VAEDecoderConfig.uniform((128, 256, 512, 512)),  # SD's decoder: 49,490,199 params
    "sd-vae-half": VAEDecoderConfig.uniform((64, 128, 256, 256)),  # every width halved
}
