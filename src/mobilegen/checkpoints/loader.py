"""Load and save checkpoints. Checkpoints are untrusted input.

Primary format: safetensors with the architecture in its metadata (`mobilegen.family`,
`mobilegen.config` as JSON), so a file always says what it is. Pickle checkpoints (.pt/.ckpt/.pth)
are read with `torch.load(weights_only=True)` only: a dict {"family", "config", "state_dict"}, or a
bare state dict when the recipe supplies the config.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mobilegen.checkpoints.guards import check_archive, check_param_bytes, regular_file
from mobilegen.errors import CheckpointError, ConfigError, first_line
from mobilegen.models import get_family

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = "1"
PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}


@dataclass
class LoadedModel:
    family: str
    config: Any
    model: Any  # torch.nn.Module in eval mode, float32
    source: str  # where the weights came from: a path, or "random"
    source_dtype: str = "float32"


def save_checkpoint(path: str | Path, family: str, model: Any) -> Path:
    """Write `model` as safetensors with its config in the metadata (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "mobilegen.format": FORMAT_VERSION,
        "mobilegen.family": family,
        "mobilegen.config": json.dumps(model.config.to_dict(), sort_keys=True),
    }
    tensors = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    return path


def build_random(family: str, config: Any, seed: int = 0) -> LoadedModel:
    import torch

    torch.manual_seed(seed)
    model = get_family(family).build(config).eval()
    if family == "stoic":  # its output conv starts at zero; random weights must move the output
        torch.nn.init.normal_(model.conv_out.weight, std=0.02)
    return LoadedModel(family, config, model, source="random")


def _safetensors_meta(path: Path) -> dict[str, str]:
    """The header's metadata only (no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    except Exception as e:  # the library raises several types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from e


def is_mobilegen_checkpoint(path: Path) -> bool:
    """A regular safetensors file whose header says mobilegen wrote it (nothing else is read)."""
    try:
        return bool(regular_file(path)) and "mobilegen.family" in _safetensors_meta(path)
    except CheckpointError:
        return False


def read_header(path: Path) -> tuple[str | None, Any]:
    """A mobilegen safetensors file's family and typed config, from its header alone (no tensor
    is read); (None, None) parts where the header does not say."""
    meta = _safetensors_meta(regular_file(path))
    family, cfg = meta.get("mobilegen.family"), _meta_config(path, meta)
    return family, (_config(path, family, cfg) if family and cfg is not None else None)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not iterable)
    except Exception as e:  # the library raises several types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(e)})") from e


def _read_pickle(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    import pickle

    import torch

    check_archive(path)  # a zip bomb is refused before torch inflates anything
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused: the pickle holds objects other than tensors and plain data "
            f"(loaded with weights_only=True; {first_line(e)})"
        ) from e
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({first_line(e)})") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    info: dict[str, Any] = {}
    if "state_dict" in obj:
        info = {k: obj[k] for k in ("family", "config") if k in obj}
        obj = obj["state_dict"]
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    extra = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if extra:
        raise CheckpointError(f"{path}: entry '{extra[0]}' is not a tensor")
    return tensors, info


def check_state_dict(path: Any, expected: dict[str, Any], found: dict[str, Any]) -> None:
    """Raise one line naming the first missing, unexpected and mis-shaped tensors."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} expected {tuple(expected[k].shape)} found {tuple(found[k].shape)}"
        for k in expected
        if k in found and tuple(expected[k].shape) != tuple(found[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (first: {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first: {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {'; '.join(shapes[:3])})")
    if parts:
        raise CheckpointError(f"{path}: tensors do not fit the config: " + "; ".join(parts))


def _check_values(path: Path, tensors: dict[str, torch.Tensor]) -> str:
    import torch

    dtypes = set()
    for name, t in tensors.items():
        if not (t.is_floating_point() or t.dtype in (torch.int64, torch.int32)):
            raise CheckpointError(f"{path}: tensor '{name}' has unsupported dtype {t.dtype}")
        if t.is_floating_point():
            dtypes.add(str(t.dtype).replace("torch.", ""))
            if not torch.isfinite(t).all():
                raise CheckpointError(f"{path}: tensor '{name}' contains NaN or inf values")
    return ",".join(sorted(dtypes)) or "float32"


def checkpoint_files(path: str | Path) -> list[Path]:
    """Every file a load of `path` reads: the file, or a diffusers folder's config.json, shard
    index and weight files (shards confined to the folder). Regular files only; provenance and
    the export cache hash exactly these."""
    path = Path(path)
    if path.is_dir():
        from mobilegen.checkpoints.diffusers import folder_files
        from mobilegen.checkpoints.pipeline_folder import (
            is_text_encoder_folder,
            text_encoder_files,
        )

        if is_text_encoder_folder(path):  # a transformers CLIP text model (text_encoder/)
            return text_encoder_files(path)

        return folder_files(path)
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(f"checkpoint not found: {path}")
    return [regular_file(path)]


def load_checkpoint(
    path: str | Path, family: str | None = None, config: dict[str, Any] | None = None,
    component: str | None = None,
) -> LoadedModel:
    """Load weights + architecture. `family`/`config` (from a recipe) fill what the file lacks;
    a config stored in the file wins unless the recipe gives one explicitly. A folder is read as
    diffusers format (`component`: "unet" or "vae" of a pipeline root; default unet). Only
    regular files are read, and a config that needs more bytes than the file holds is refused
    before any tensor is."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir() and (component == "text_encoder" or family == "clip-text"):
        from mobilegen.checkpoints.pipeline_folder import read_text_encoder

        folder = path / "text_encoder" if (path / "model_index.json").is_file() else path
        cfg, tensors = read_text_encoder(folder)
        return _instantiate(folder, "clip-text", cfg, tensors)
    if path.is_dir() and family == "vae-encoder":  # the encoder half of an AutoencoderKL
        from mobilegen.models.vae_encoder import load_from_diffusers

        folder = path / "vae" if (path / "model_index.json").is_file() else path
        cfg, tensors = load_from_diffusers(folder)
        return _instantiate(folder, "vae-encoder", cfg, tensors)
    if path.is_dir():
        from mobilegen.checkpoints.pipeline_folder import is_text_encoder_folder

        if is_text_encoder_folder(path):
            return load_checkpoint(path, "clip-text", config)
        from mobilegen.checkpoints.diffusers import load_diffusers_folder

        fam, cfg, tensors = load_diffusers_folder(path, component)
        if family and family != fam:
            raise CheckpointError(f"{path}: recipe says family '{family}' but the folder holds "
                                  f"a '{fam}'")
        return _instantiate(path, fam, cfg, tensors)
    if regular_file(path).stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty (0 bytes)")
    tensors: dict[str, Any] | None = None
    if path.suffix in PICKLE_SUFFIXES:
        tensors, info = _read_pickle(path)
        stored_family, stored_config = info.get("family"), info.get("config")
    else:
        meta = _safetensors_meta(path)
        stored_family, stored_config = meta.get("mobilegen.family"), _meta_config(path, meta)
    fam = family or stored_family
    if fam is None:
        raise CheckpointError(
            f"{path}: no 'mobilegen.family' in the file; set model.family in the recipe"
        )
    if family and stored_family and family != stored_family:
        raise CheckpointError(
            f"{path}: recipe says family '{family}' but the checkpoint is '{stored_family}'"
        )
    cfg_dict = config if config is not None else stored_config
    if cfg_dict is None:
        raise CheckpointError(
            f"{path}: no architecture config in the file; give [model.config] in the recipe"
        )
    cfg = _config(path, fam, cfg_dict)
    shell = _shell(fam, cfg)
    check_param_bytes(path, fam, shell, path.stat().st_size)
    if tensors is None:
        tensors = _read_safetensors(path)
    return _instantiate(path, fam, cfg, tensors, shell)


def _meta_config(path: Path, meta: dict[str, str]) -> Any:
    raw = meta.get("mobilegen.config")
    try:
        return json.loads(raw) if raw else None
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise CheckpointError(f"{path}: metadata 'mobilegen.config' is not JSON ({why})") from e


def _config(path: Path, fam: str, cfg_dict: Any) -> Any:
    if not isinstance(cfg_dict, dict):
        raise ConfigError(f"{path}: bad config: expected a table, found "
                          f"{type(cfg_dict).__name__}")
    try:
        return get_family(fam).config_from_dict(dict(cfg_dict))
    except (TypeError, ValueError, ConfigError) as e:
        raise ConfigError(f"{path}: bad config: {first_line(e)}") from e


def _shell(fam: str, cfg: Any) -> Any:
    """The model on the meta device: shapes and parameter counts, no memory."""
    import torch

    with torch.device("meta"):
        return get_family(fam).build(cfg)


def _instantiate(
    path: Path, fam: str, cfg: Any, tensors: dict[str, Any], shell: Any = None
) -> LoadedModel:
    src_dtype = _check_values(path, tensors)  # fp16 weights run in float32
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    expected = (shell if shell is not None else _shell(fam, cfg)).state_dict()
    check_state_dict(path, expected, tensors)
    for k, v in expected.items():  # an integer tensor where a weight belongs would be cast silently
        if v.is_floating_point() and not tensors[k].is_floating_point():
            raise CheckpointError(
                f"{path}: tensor '{k}' has dtype {tensors[k].dtype}, expected floating point"
            )
    model = _build_weightless(fam, cfg)
    model.load_state_dict(tensors, strict=True, assign=True)  # the file's tensors, not a copy
    return LoadedModel(fam, cfg, model.eval(), source=str(path), source_dtype=src_dtype)


def _build_weightless(fam: str, cfg: Any) -> Any:
    """The model with every parameter on the meta device and its buffers real: constructor
    constants such as clip_text's causal mask (non-persistent, absent from any checkpoint) keep
    their values, and the weights cost no memory until `assign=True` puts the file's in place.
    Each parameter is moved to meta as it is registered, so at most one layer's fresh (untouched)
    storage exists at a time and its random init runs on meta."""
    import torch

    original = torch.nn.Module.register_parameter

    def to_meta(module: torch.nn.Module, name: str, param: Any) -> None:
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = to_meta  # type: ignore[method-assign]
    try:
        return get_family(fam).build(cfg)
    finally:
        torch.nn.Module.register_parameter = original  # type: ignore[method-assign]
