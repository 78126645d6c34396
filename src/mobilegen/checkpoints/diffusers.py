"""Read diffusers-format folders: a model folder (config.json + diffusion_pytorch_model.*) or a
pipeline root holding `unet/` and `vae/`.

Supported classes: UNet2DConditionModel (-> family "unet", UNetConfig) and AutoencoderKL (-> family
"vae-decoder", VAEDecoderConfig; the decoder part only, widths read from tensor shapes). Every
state dict is checked against the architecture before it is returned, so a layout that does not
fit fails here with the keys named, never halfway through an export. Weights are read with
safetensors, or a `.bin` through torch.load(weights_only=True): checkpoints are untrusted input.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mobilegen.checkpoints.guards import (
    check_archive,
    check_param_bytes,
    confined,
    read_json_file,
    regular_file,
)
from mobilegen.errors import CheckpointError, ConfigError

UNET_CLASS, VAE_CLASS = "UNet2DConditionModel", "AutoencoderKL"
FAMILIES = {UNET_CLASS: "unet", VAE_CLASS: "vae-decoder"}
COMPONENTS = {"unet": UNET_CLASS, "vae": VAE_CLASS}
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
)

# UNet2DConditionModel options this architecture does not implement: each must keep its default.
_UNET_DEFAULTS: dict[str, Any] = {
    "center_input_sample": False,
    "act_fn": "silu",
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "dual_cross_attention": False,
    "class_embed_type": None,
    "addition_embed_type": None,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
}
# Old diffusers (< 0.14) named the VAE's mid attention like this; diffusers renames on load too.
_OLD_VAE_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.",
                      ".proj_attn.": ".to_out.0."}


def _component_folder(path: Path, component: str | None) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"{path}: not a folder (expected a diffusers model folder with "
                              "config.json, or a pipeline root with unet/ and vae/)")
    if component is not None and component not in COMPONENTS:
        raise ConfigError(f"unknown diffusers component '{component}' "
                          f"(known: {', '.join(COMPONENTS)})")
    if (path / "config.json").is_file():
        return path
    name = component or "unet"
    if (path / name / "config.json").is_file():
        return confined(path, path / name)  # a pipeline's unet/ linked elsewhere: refused
    present = sorted(p.name for p in path.iterdir() if (p / "config.json").is_file())
    raise CheckpointError(f"{path}: no config.json, and no {name}/config.json for component "
                          f"'{name}' (components with a config.json here: {present or 'none'})")


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / "config.json"
    config = read_json_file(path, folder)  # confined, bounded, RecursionError named
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(config).__name__}")
    return config


def _load_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix != ".safetensors":
        check_archive(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file or a pickle that weights_only refuses
        raise CheckpointError(f"{path}: cannot read weights ({type(err).__name__}: {err})") \
            from None
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a flat dict of tensors")
    return dict(obj)


def _shard_names(index: Path) -> list[str]:
    """The shard files an index names, each a plain relative name inside its folder."""
    data = read_json_file(index, index.parent)
    if not isinstance(data, dict):
        raise CheckpointError(f"{index}: expected a JSON object, found {type(data).__name__}")
    weight_map = data.get("weight_map", {})
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: 'weight_map' must map tensor names to file names")
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        parts = Path(shard).parts
        if not parts or Path(shard).is_absolute() or ".." in parts or "\\" in shard:
            raise CheckpointError(f"{index}: shard '{shard}' is outside the model folder "
                                  "(only file names inside it are read)")
    return shards


def weight_files(folder: Path) -> list[Path]:
    """The weight files a load of model folder `folder` reads: one file, or an index's shards
    (confined to the folder, regular files only)."""
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"  # sharded: {"weight_map": {key: shard file}}
        if index.is_file():
            return [confined(folder, regular_file(folder / s)) for s in _shard_names(index)]
        if (folder / name).exists():
            return [confined(folder, regular_file(folder / name))]
    raise CheckpointError(f"{folder}: no weight file (expected one of: {', '.join(WEIGHT_FILES)})")


def folder_files(path: Path, component: str | None = None) -> list[Path]:
    """Every file a load of `path` (a model folder or pipeline root) reads: its config.json,
    the shard index if any, and the weight files: what provenance and the cache key hash."""
    folder = _component_folder(path, component)
    files = weight_files(folder)
    indexes = [folder / f"{n}.index.json" for n in WEIGHT_FILES
               if (folder / f"{n}.index.json").is_file()][:1]
    return [confined(folder, regular_file(folder / "config.json")), *indexes, *files]


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        sd.update(_load_file(f))
    return sd


def _per_stage(config: dict[str, Any], key: str, default: Any, n: int, source: str) -> list[Any]:
    value = config.get(key, default)
    if value is None:
        raise CheckpointError(f"{source}: missing key '{key}'")
    values = list(value) if isinstance(value, list | tuple) else [value] * n
    if len(values) != n:
        raise CheckpointError(f"{source}: '{key}' has {len(values)} entries, expected {n}")
    return values


def unet_config_from_diffusers(config: dict[str, Any], source: str = "config.json") -> Any:
    """Map a UNet2DConditionModel config.json onto UNetConfig (counts per stage); a value of
    the wrong type anywhere is one line naming the file."""
    try:
        return _unet_config(config, source)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as err:
        raise CheckpointError(f"{source}: a value of the wrong type ({type(err).__name__}: "
                              f"{err})") from None


def _unet_config(config: dict[str, Any], source: str) -> Any:
    from mobilegen.models.unet import UNetConfig

    for key, default in _UNET_DEFAULTS.items():
        if config.get(key, default) != default:
            raise CheckpointError(f"{source}: '{key}' = {config[key]!r} is not supported "
                                  f"(expected {default!r})")
    chans = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    n = len(chans)
    down_types = _per_stage(config, "down_block_types", None, n, source)
    up_types = _per_stage(config, "up_block_types", None, n, source)
    layers = _per_stage(config, "layers_per_block", 2, n, source)
    for key, default in (("only_cross_attention", False), ("cross_attention_dim", 1280),
                         ("transformer_layers_per_block", 1)):
        values = _per_stage(config, key, default, n, source)
        if len(set(map(str, values))) != 1 or isinstance(values[0], list | tuple):
            raise CheckpointError(f"{source}: '{key}' = {config[key]!r}: only one value shared "
                                  "by every stage is supported")
        if key == "only_cross_attention" and values[0]:
            raise CheckpointError(f"{source}: 'only_cross_attention' = True is not supported")
    down_attn, up_attn = [], []
    for i, kind in enumerate(down_types):
        if kind not in ("CrossAttnDownBlock2D", "DownBlock2D"):
            raise CheckpointError(f"{source}: down_block_types[{i}] = '{kind}' is not supported "
                                  "(supported: CrossAttnDownBlock2D, DownBlock2D)")
        down_attn.append(layers[i] if kind == "CrossAttnDownBlock2D" else 0)
    for i, kind in enumerate(up_types):
        if kind not in ("CrossAttnUpBlock2D", "UpBlock2D"):
            raise CheckpointError(f"{source}: up_block_types[{i}] = '{kind}' is not supported "
                                  "(supported: CrossAttnUpBlock2D, UpBlock2D)")
        up_attn.append(layers[n - 1 - i] + 1 if kind == "CrossAttnUpBlock2D" else 0)
    mid_type = config.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    if mid_type not in ("UNetMidBlock2DCrossAttn", None):
        raise CheckpointError(f"{source}: mid_block_type = '{mid_type}' is not supported "
                              "(supported: UNetMidBlock2DCrossAttn, null)")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    sample_size = config.get("sample_size") or 64
    try:
        return UNetConfig(
            in_channels=config.get("in_channels", 4),
            out_channels=config.get("out_channels", 4),
            block_out_channels=tuple(chans),
            down_resnets=tuple(layers),
            down_attentions=tuple(down_attn),
            mid_resnets=2 if mid_type else 0,
            mid_attentions=1 if mid_type else 0,
            up_resnets=tuple(x + 1 for x in reversed(layers)),
            up_attentions=tuple(up_attn),
            cross_attention_dim=_per_stage(config, "cross_attention_dim", 1280, n, source)[0],
            attention_head_dim=tuple(heads) if isinstance(heads, list | tuple) else heads,
            transformer_layers_per_block=_per_stage(
                config, "transformer_layers_per_block", 1, n, source)[0],
            use_linear_projection=bool(config.get("use_linear_projection", False)),
            norm_num_groups=config.get("norm_num_groups", 32),
            norm_eps=config.get("norm_eps", 1e-5),
            flip_sin_to_cos=bool(config.get("flip_sin_to_cos", True)),
            freq_shift=float(config.get("freq_shift", 0)),
            sample_size=sample_size if isinstance(sample_size, int) else sample_size[0],
        )
    except (ConfigError, TypeError, ValueError) as err:  # ConfigError names the key
        raise CheckpointError(f"{source}: {err}") from None


def check_vae_config(config: dict[str, Any], source: str) -> None:
    """What an AutoencoderKL config.json must hold before its weights are read (the decoder's
    widths come from the tensors; the rest of the config is checked here)."""
    from mobilegen.models.bounds import out_of_range

    up_types = config.get("up_block_types", ["UpDecoderBlock2D"])
    if not isinstance(up_types, list) or set(map(str, up_types)) != {"UpDecoderBlock2D"}:
        raise CheckpointError(f"{source}: up_block_types {up_types!r} are not supported "
                              "(supported: UpDecoderBlock2D)")
    bad = out_of_range([("norm_num_groups", config.get("norm_num_groups", 32))], 1, 1024) \
        or out_of_range([(k, config[k]) for k in ("scaling_factor", "shift_factor")
                         if config.get(k) is not None], -1e4, 1e4)
    if bad:
        raise CheckpointError(f"{source}: {bad}")


def vae_decoder_part(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The decoder's tensors of an AutoencoderKL state dict, old attention names renamed."""
    out = {}
    for key, value in sd.items():
        if key.startswith(("decoder.", "post_quant_conv.")):
            for old, new in _OLD_VAE_ATTENTION.items():
                key = key.replace(old, new) if ".attentions." in key else key
            out[key] = value
    return out


def check_state_dict(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str,
                     layout: str) -> None:
    """Raise one CheckpointError naming (up to 5 of) the missing, unexpected and misshapen keys."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} expected {expected[k]} found {tuple(sd[k].shape)}"
             for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    parts = [f"{len(items)} {what}: {', '.join(items[:5])}{', ...' if len(items) > 5 else ''}"
             for what, items in (("missing", missing), ("unexpected", unexpected),
                                 ("shape mismatch", wrong)) if items]
    if parts:
        raise CheckpointError(f"{source}: tensors do not fit the {layout} layout: "
                              + "; ".join(parts))


def load_diffusers_folder(
    path: str | Path, component: str | None = None
) -> tuple[str, Any, dict[str, torch.Tensor]]:
    """-> (family, config, state_dict), the state dict checked against the architecture.

    `component` picks `unet` (default) or `vae` from a pipeline root; a model folder is read as
    it is, and a component that contradicts its class is an error."""
    folder = _component_folder(Path(path), component)
    config = _read_config(folder)
    source = str(folder / "config.json")
    class_name = config.get("_class_name")
    if class_name not in FAMILIES:
        raise CheckpointError(f"{source}: _class_name '{class_name}' is not supported "
                              f"(supported: {', '.join(FAMILIES)})")
    if component is not None and COMPONENTS[component] != class_name:
        raise CheckpointError(f"{source}: holds a {class_name}, but component '{component}' "
                              f"asks for a {COMPONENTS[component]}")
    if class_name == UNET_CLASS:
        from mobilegen.models.unet import EfficientUNet

        cfg = unet_config_from_diffusers(config, source)
        with torch.device("meta"):  # shapes only: no memory for an SD-size model
            shell = EfficientUNet(cfg)
        files = weight_files(folder)  # a config far larger than its weights: refused unread
        check_param_bytes(source, "unet", shell, sum(f.stat().st_size for f in files))
        sd = _read_weights(folder)
    else:
        from mobilegen.models.vae_decoder import VAEDecoder, VAEDecoderConfig

        check_vae_config(config, source)
        sd = vae_decoder_part(_read_weights(folder))
        cfg = VAEDecoderConfig.from_state_dict(  # widths from the tensors' own shapes
            sd, norm_num_groups=config.get("norm_num_groups", 32), source=source,
            latent_scaling_factor=float(config.get("scaling_factor") or 0.18215),
            latent_shift_factor=float(config.get("shift_factor") or 0.0),
        )
        with torch.device("meta"):
            shell = VAEDecoder(cfg)
    check_state_dict(shell, sd, str(folder), class_name)
    return FAMILIES[class_name], cfg, sd


def load_diffusers_model(
    path: str | Path, component: str | None = None
) -> tuple[str, Any, torch.nn.Module]:
    """-> (family, config, module in eval mode with the folder's weights)."""
    family, cfg, sd = load_diffusers_folder(path, component)
    if family == "unet":
        from mobilegen.models.unet import EfficientUNet as build
    else:
        from mobilegen.models.vae_decoder import VAEDecoder as build  # type: ignore[assignment]
    model = build(cfg)
    model.load_state_dict(sd, strict=True)
    return family, cfg, model.eval()
