"""SD image encoder (the encoder half of diffusers' AutoencoderKL): image -> latent distribution.

image (B, in_channels, H, W) in [-1, 1] -> moments (B, 2 * latent_channels, H/f, W/f) with
f = 2^(blocks - 1):
the mean and the log-variance of the diagonal Gaussian `AutoencoderKL.encode(x).latent_dist`
wraps, concatenated on channels as `quant_conv` writes them (`latent_dist.parameters`). A latent
for the UNet is `(mean - latent_shift_factor) * latent_scaling_factor` (its mode), or that plus
`exp(logvar / 2) * noise` for a draw. img2img needs it; diffusers' ONNX folder has a `vae_encoder`.

Parameter names are AutoencoderKL's (`encoder.*`, `quant_conv.*`), so the encoder part of a
diffusers `vae/` state dict loads as it is (`load_from_diffusers`). The widths are diffusers'
uniform shape (block_out_channels, layers_per_block, norm_num_groups): an encoder is not pruned
by this project, and the state dict is checked against the shape those fields build.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mobilegen.errors import CheckpointError, ConfigError
from mobilegen.models.bounds import out_of_range
from mobilegen.models.vae_decoder import ResnetBlock, ResnetWidths, SpatialSelfAttention
from mobilegen.signature import ModelIO, TensorSpec


@dataclass(frozen=True)
class VAEEncoderConfig:
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)  # SD's encoder
    layers_per_block: int = 2
    norm_num_groups: int = 32
    in_channels: int = 3
    latent_channels: int = 4
    mid_attention: bool = True  # diffusers' mid_block_add_attention
    use_quant_conv: bool = True
    norm_eps: float = 1e-6
    latent_scaling_factor: float = 0.18215
    latent_shift_factor: float = 0.0
    image_size: int = 512  # pixels per side for example inputs and export

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        bad = (out_of_range([(f"block_out_channels[{i}]", c)
                             for i, c in enumerate(self.block_out_channels)], 1, 16384)
               or out_of_range([("layers_per_block", self.layers_per_block)], 1, 64)
               or out_of_range([("norm_num_groups", self.norm_num_groups),
                                ("in_channels", self.in_channels),
                                ("latent_channels", self.latent_channels)], 1, 1024)
               or out_of_range([("image_size", self.image_size)], 1, 16384))
        if bad or not self.block_out_channels:
            raise ConfigError(f"invalid VAE encoder config: {bad or 'block_out_channels is empty'}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups:
                raise ConfigError(f"invalid VAE encoder config: norm_num_groups "
                                  f"{self.norm_num_groups} does not divide width {c}")
        problem = self.size_problem(self.image_size)
        if problem:
            raise ConfigError(f"invalid VAE encoder config: {problem}")

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def size_problem(self, size: int) -> str | None:
        if size % self.downsample:
            return (f"image size {size} is not a multiple of {self.downsample} (the encoder "
                    f"halves it {len(self.block_out_channels) - 1} times)")
        return None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(self.block_out_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEEncoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown VAE encoder config key '{unknown[0]}' "
                              f"(known: {sorted(known)})")
        try:
            return cls(**d)
        except TypeError as err:
            raise ConfigError(f"invalid VAE encoder config value: {err}") from None


class Downsample(nn.Module):
    """diffusers' Downsample2D with padding=0: pad right and bottom by one, 3x3 conv stride 2."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # (B, C, H/2, W/2)


class DownBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, layers: int, groups: int, eps: float,
                 downsample: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            ResnetBlock(ResnetWidths.of(c_in if i == 0 else c_out, c_out, c_out, groups), eps)
            for i in range(layers))
        self.downsamplers = nn.ModuleList([Downsample(c_out)] if downsample else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        for down in self.downsamplers:
            x = down(x)
        return x


class MidBlock(nn.Module):
    def __init__(self, ch: int, groups: int, eps: float, attention: bool) -> None:
        super().__init__()
        w = ResnetWidths.of(ch, ch, ch, groups)
        self.resnets = nn.ModuleList([ResnetBlock(w, eps), ResnetBlock(w, eps)])
        self.attentions = nn.ModuleList([SpatialSelfAttention(ch, ch, groups, eps)]
                                        if attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEEncoderConfig) -> None:
        super().__init__()
        chans, eps, g = cfg.block_out_channels, cfg.norm_eps, cfg.norm_num_groups
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down_blocks = nn.ModuleList(
            DownBlock(chans[max(i - 1, 0)], c, cfg.layers_per_block, g, eps,
                      i < len(chans) - 1) for i, c in enumerate(chans))
        self.mid_block = MidBlock(chans[-1], g, eps, cfg.mid_attention)
        self.conv_norm_out = nn.GroupNorm(g, chans[-1], eps=eps)
        self.conv_out = nn.Conv2d(chans[-1], 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)  # (B, C0, H, W)
        for block in self.down_blocks:
            x = block(x)  # halved except after the last block
        x = self.mid_block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))  # (B, 2L, H/f, W/f)


class VAEEncoder(nn.Module):
    def __init__(self, cfg: VAEEncoderConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        c = 2 * cfg.latent_channels
        self.quant_conv = nn.Conv2d(c, c, 1) if cfg.use_quant_conv else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h = self.encoder(image)
        return h if self.quant_conv is None else self.quant_conv(h)  # [mean; logvar]

    def example_inputs(self, batch: int = 1, seed: int = 0, t: float = 0.0,
                       image_size: int | None = None) -> tuple[torch.Tensor, ...]:
        """Images in [-1, 1] (`t` is unused, as for the decoder)."""
        size = image_size or self.config.image_size
        g = torch.Generator().manual_seed(seed)
        return (torch.rand(batch, self.config.in_channels, size, size, generator=g) * 2 - 1,)


def io_spec(cfg: VAEEncoderConfig, image_size: int | None = None) -> ModelIO:
    size = image_size or cfg.image_size
    lat = size // cfg.downsample
    return ModelIO(
        inputs=(TensorSpec("image", ("batch", cfg.in_channels, size, size), "float32",
                           "RGB image in [-1, 1], NCHW", value_range=(-1.0, 1.0)),),
        outputs=(TensorSpec("moments", ("batch", 2 * cfg.latent_channels, lat, lat), "float32",
                            "latent distribution: [mean; logvar] on channels",
                            extra={"latent_scaling_factor": cfg.latent_scaling_factor,
                                   "latent_shift_factor": cfg.latent_shift_factor}),),
    )


def component_entry(cfg: VAEEncoderConfig, recipe: Any, image_size: int) -> dict[str, Any]:
    lat = image_size // cfg.downsample
    return {
        "name": "vae_encoder",
        "image_shape": [cfg.in_channels, image_size, image_size],
        "sample_shape": [2 * cfg.latent_channels, lat, lat],
        "layouts": {"image": "NCHW, RGB", "moments": "NCHW: mean then logvar"},
        "latent_scaling_factor": cfg.latent_scaling_factor,
        "latent_shift_factor": cfg.latent_shift_factor,
        "output_normalization": (f"latent = (mean - {cfg.latent_shift_factor}) * "
                                 f"{cfg.latent_scaling_factor} (the mode; add "
                                 "exp(logvar / 2) * noise for a draw)"),
        "value_ranges": {"image": [-1.0, 1.0]},
    }


def config_from_diffusers(config: dict[str, Any], source: str, image_size: int | None = None
                          ) -> VAEEncoderConfig:
    """An AutoencoderKL config.json -> VAEEncoderConfig; options this encoder lacks are refused."""
    down = config.get("down_block_types", ["DownEncoderBlock2D"])
    if set(down) != {"DownEncoderBlock2D"}:
        raise CheckpointError(f"{source}: down_block_types {sorted(set(down))} are not "
                              "supported (supported: DownEncoderBlock2D)")
    if config.get("act_fn", "silu") != "silu":
        raise CheckpointError(f"{source}: act_fn {config['act_fn']!r} is not supported "
                              "(expected 'silu')")
    chans = tuple(config.get("block_out_channels", (64,)))
    if len(down) != len(chans):
        raise CheckpointError(f"{source}: {len(down)} down_block_types for {len(chans)} "
                              "block_out_channels")
    sample = config.get("sample_size") or 512
    try:
        return VAEEncoderConfig(
            block_out_channels=chans, layers_per_block=int(config.get("layers_per_block", 1)),
            norm_num_groups=int(config.get("norm_num_groups", 32)),
            in_channels=int(config.get("in_channels", 3)),
            latent_channels=int(config.get("latent_channels", 4)),
            mid_attention=bool(config.get("mid_block_add_attention", True)),
            use_quant_conv=bool(config.get("use_quant_conv", True)),
            latent_scaling_factor=float(config.get("scaling_factor") or 0.18215),
            latent_shift_factor=float(config.get("shift_factor") or 0.0),
            image_size=image_size or (sample if isinstance(sample, int) else sample[0]))
    except (ConfigError, TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: {err}") from None


def encoder_part(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's tensors of an AutoencoderKL state dict (old attention names renamed)."""
    from mobilegen.checkpoints.diffusers import _OLD_VAE_ATTENTION

    out = {}
    for key, value in sd.items():
        if key.startswith(("encoder.", "quant_conv.")):
            for old, new in _OLD_VAE_ATTENTION.items():
                key = key.replace(old, new) if ".attentions." in key else key
            out[key] = value
    return out


def load_from_diffusers(folder: str | Path, image_size: int | None = None
                        ) -> tuple[VAEEncoderConfig, dict[str, torch.Tensor]]:
    """A diffusers `vae/` folder (AutoencoderKL) -> (config, encoder state dict checked against
    it). Reads config.json and the weight file(s) like the decoder's loader (safetensors first,
    `torch.load(weights_only=True)` otherwise; regular files inside the folder only)."""
    from mobilegen.checkpoints.diffusers import (
        VAE_CLASS,
        _read_config,
        _read_weights,
        check_state_dict,
    )

    folder = Path(folder)
    config = _read_config(folder)
    source = str(folder / "config.json")
    if config.get("_class_name") != VAE_CLASS:
        raise CheckpointError(f"{source}: _class_name '{config.get('_class_name')}' is not "
                              f"supported (supported: {VAE_CLASS})")
    cfg = config_from_diffusers(config, source, image_size)
    sd = encoder_part(_read_weights(folder))
    with torch.device("meta"):
        shell = VAEEncoder(cfg)
    check_state_dict(shell, sd, str(folder), f"{VAE_CLASS} encoder")
    return cfg, sd


def load_model(folder: str | Path, image_size: int | None = None) -> VAEEncoder:
    cfg, sd = load_from_diffusers(folder, image_size)
    model = VAEEncoder(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


VARIANTS: dict[str, VAEEncoderConfig] = {
    "sd-vae-encoder": VAEEncoderConfig(),  # SD-1.x / 2.x: 34,163,664 params with quant_conv
}
