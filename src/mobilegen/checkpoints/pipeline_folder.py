"""A diffusers pipeline folder read as the parts an SD export needs: `model_index.json` names the
components; `text_encoder/` (transformers' CLIPTextModel: config.json + model.safetensors),
`tokenizer/` (CLIP BPE: vocab.json, merges.txt, tokenizer_config.json), `scheduler/`
(scheduler_config.json), `unet/` and `vae/` (read by checkpoints/diffusers.py).

Folders are untrusted input like any checkpoint: only regular files inside the folder are read,
weights through safetensors or `torch.load(weights_only=True)` (diffusers.py's reader).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobilegen.checkpoints.guards import regular_file
from mobilegen.errors import CheckpointError

TEXT_ENCODER_CLASSES = ("CLIPTextModel", "CLIPTextModelWithProjection")
TEXT_WEIGHT_FILES = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # required
TOKENIZER_EXTRA = ("tokenizer_config.json", "special_tokens_map.json")  # copied when present
# transformers' CLIPTextConfig defaults (used where a config.json leaves a key out)
_CLIP_DEFAULTS: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 1}
COMPONENT_CLASSES = {"text_encoder": TEXT_ENCODER_CLASSES, "tokenizer": ("CLIPTokenizer",
                     "CLIPTokenizerFast"), "unet": ("UNet2DConditionModel",),
                     "vae": ("AutoencoderKL",)}


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(regular_file(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


# ------------------------------------------------------------------------------ text encoder
def is_text_encoder_folder(path: Path) -> bool:
    """A transformers CLIP text-model folder (a pipeline's `text_encoder/`)?"""
    cfg = path / "config.json"
    if not cfg.is_file():
        return False
    try:
        data = json.loads(cfg.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(data, dict):
        return False
    archs = data.get("architectures") or []
    return data.get("model_type") == "clip_text_model" or any(
        a in TEXT_ENCODER_CLASSES for a in archs)


def text_encoder_config(config: dict[str, Any], source: str) -> Any:
    """transformers' CLIPTextConfig (config.json) -> CLIPTextConfig; what this module does not
    implement (another architecture, activation) is refused naming the key."""
    from mobilegen.errors import ConfigError
    from mobilegen.models.clip_text import CLIPTextConfig

    archs = config.get("architectures") or []
    if archs and not any(a in TEXT_ENCODER_CLASSES for a in archs):
        raise CheckpointError(f"{source}: 'architectures' = {archs} is not supported "
                              f"(supported: {', '.join(TEXT_ENCODER_CLASSES)})")
    values = {k: config.get(k, d) for k, d in _CLIP_DEFAULTS.items()}
    values = {k: (v if v is not None else _CLIP_DEFAULTS[k]) for k, v in values.items()}
    try:
        return CLIPTextConfig(**values)
    except ConfigError as err:
        raise CheckpointError(f"{source}: {err}") from None


def text_encoder_files(folder: Path) -> list[Path]:
    """What loading `folder` reads: config.json and the weight file (regular files only)."""
    for name in TEXT_WEIGHT_FILES:
        if (folder / name).exists():
            return [regular_file(folder / "config.json"), regular_file(folder / name)]
    if any((folder / f"{n}.index.json").exists() for n in TEXT_WEIGHT_FILES):
        raise CheckpointError(f"{folder}: a sharded text encoder is not supported (SD's are "
                              "one file)")
    raise CheckpointError(f"{folder}: no weight file (expected one of: "
                          f"{', '.join(TEXT_WEIGHT_FILES)})")


def read_text_encoder(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """-> (CLIPTextConfig, state dict in this project's names; not yet checked: the loader's
    _instantiate checks keys, shapes, dtypes and values like any checkpoint)."""
    from mobilegen.checkpoints.diffusers import _load_file
    from mobilegen.models.clip_text import load_state_dict_keys

    folder = Path(folder)
    config_path, weights = text_encoder_files(folder)
    cfg = text_encoder_config(read_json(config_path), str(config_path))
    sd = load_state_dict_keys(_load_file(weights))
    sd.pop("text_projection.weight", None)  # CLIPTextModelWithProjection: unused by SD's UNet
    return cfg, sd


# --------------------------------------------------------------------------------- tokenizer
def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):  # AddedToken serialised: {"content": "<|endoftext|>", ...}
        value = value.get("content")
    return value if isinstance(value, str) else None


def tokenizer_spec(folder: Path, max_length: int) -> dict[str, Any]:
    """How to tokenize, from the pipeline's tokenizer folder: the special tokens and their ids,
    max length, truncation, padding, lower-casing. Plain data (the manifest carries it)."""
    for name in TOKENIZER_FILES:
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: missing {name} (a CLIP BPE tokenizer needs "
                                  f"{' and '.join(TOKENIZER_FILES)})")
    vocab = read_json(folder / "vocab.json")
    conf: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        if (folder / name).is_file():
            conf.update({k: v for k, v in read_json(folder / name).items() if v is not None})
    cls = conf.get("tokenizer_class", "CLIPTokenizer")
    if cls not in COMPONENT_CLASSES["tokenizer"]:
        raise CheckpointError(f"{folder / 'tokenizer_config.json'}: 'tokenizer_class' = "
                              f"{cls!r} is not supported (supported: CLIPTokenizer)")
    tokens = {"bos": _token_text(conf.get("bos_token")) or "<|startoftext|>",
              "eos": _token_text(conf.get("eos_token")) or "<|endoftext|>",
              "pad": _token_text(conf.get("pad_token")) or "<|endoftext|>",
              "unk": _token_text(conf.get("unk_token")) or "<|endoftext|>"}
    ids = {}
    for role, text in tokens.items():
        if text not in vocab:
            raise CheckpointError(f"{folder / 'vocab.json'}: the {role} token {text!r} is not "
                                  "in the vocabulary")
        ids[role] = int(vocab[text])
    model_max = conf.get("model_max_length")
    if isinstance(model_max, int) and model_max < max_length:
        max_length = model_max
    return {"kind": "clip-bpe", "tokens": tokens, "ids": ids, "max_length": max_length,
            "lower_case": bool(conf.get("do_lower_case", True)), "vocab_size": len(vocab)}


# -------------------------------------------------------------------------------- the folder
def read_model_index(root: Path) -> dict[str, str]:
    """component -> class name, for the components an SD export uses; each must be present."""
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise CheckpointError(f"{root}: no model_index.json (not a diffusers pipeline folder)")
    index = read_json(index_path)
    out = {}
    for comp, classes in {**COMPONENT_CLASSES, "scheduler": None}.items():
        entry = index.get(comp)
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], str)):
            raise CheckpointError(f"{index_path}: no '{comp}' component "
                                  "(expected [library, class])")
        if classes is not None and entry[1] not in classes:
            raise CheckpointError(f"{index_path}: '{comp}' is a {entry[1]}, not supported "
                                  f"(supported: {', '.join(classes)})")
        if not (root / comp).is_dir():
            raise CheckpointError(f"{root}: model_index.json names '{comp}' but {comp}/ is "
                                  "missing")
        out[comp] = entry[1]
    return out


def scheduler_config(root: Path) -> dict[str, Any]:
    return read_json(root / "scheduler" / "scheduler_config.json")
