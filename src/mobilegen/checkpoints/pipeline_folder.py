"""A diffusers pipeline folder read as the parts an SD export needs: `model_index.json` names the
components; `text_encoder/` (transformers' CLIPTextModel: config.json + model.safetensors),
`tokenizer/` (CLIP BPE: vocab.json, merges.txt, tokenizer_config.json), `scheduler/`
(scheduler_config.json), `unet/` and `vae/` (read by checkpoints/diffusers.py).

Folders are untrusted input like any checkpoint: only regular files inside the folder are read
(every file and every folder walked resolves inside it: guards.confined), weights through
safetensors or `torch.load(weights_only=True)` (diffusers.py's reader). The tokenizer and the
scheduler config are read and checked when the recipe loads, before any export work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobilegen.checkpoints.guards import check_tree, confined, read_json_file, regular_file
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


def read_json(path: Path, root: Path | None = None) -> dict[str, Any]:
    data = read_json_file(path, root)
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
    except (OSError, ValueError, RecursionError):  # read properly (and refused) by the loader
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
    if not isinstance(archs, list):
        raise CheckpointError(f"{source}: 'architectures' must be a list, found {archs!r}")
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
            return [confined(folder, regular_file(folder / "config.json")),
                    confined(folder, regular_file(folder / name))]
    if any((folder / f"{n}.index.json").exists() for n in TEXT_WEIGHT_FILES):
        raise CheckpointError(f"{folder}: a sharded text encoder is not supported (SD's are "
                              "one file)")
    raise CheckpointError(f"{folder}: no weight file (expected one of: "
                          f"{', '.join(TEXT_WEIGHT_FILES)})")


def read_text_encoder(folder: str | Path) -> tuple[Any, dict[str, Any]]:
    """-> (CLIPTextConfig, state dict in this project's names; not yet checked: the loader's
    _instantiate checks keys, shapes, dtypes and values like any checkpoint)."""
    import torch

    from mobilegen.checkpoints.diffusers import _load_file
    from mobilegen.checkpoints.guards import check_param_bytes
    from mobilegen.models.clip_text import CLIPTextEncoder, load_state_dict_keys

    folder = Path(folder)
    config_path, weights = text_encoder_files(folder)
    cfg = text_encoder_config(read_json(config_path), str(config_path))
    with torch.device("meta"):  # a config far larger than its weights: refused unread
        shell = CLIPTextEncoder(cfg)
    check_param_bytes(config_path, "clip-text", shell, weights.stat().st_size)
    sd = load_state_dict_keys(_load_file(weights))
    sd.pop("text_projection.weight", None)  # CLIPTextModelWithProjection: unused by SD's UNet
    return cfg, sd


# --------------------------------------------------------------------------------- tokenizer
MAX_TOKENS = 4096  # a CLIP text encoder reads 77; no SD text encoder reads more than this


def _token_text(value: Any, source: Path, key: str) -> str | None:
    if value is None:
        return None
    text = value.get("content") if isinstance(value, dict) else value  # AddedToken serialised
    if not isinstance(text, str) or not text:
        raise CheckpointError(f"{source}: key '{key}' must be a token string (or "
                              f"{{\"content\": \"...\"}}), found {value!r}")
    return text


def _check_vocab(vocab: Any, source: Path) -> dict[str, int]:
    if not isinstance(vocab, dict) or not vocab:
        kind = "empty" if vocab == {} else f"a {type(vocab).__name__}"
        raise CheckpointError(f"{source}: the vocabulary must map tokens to ids, found {kind}")
    for token, idx in vocab.items():
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < 10_000_000:
            raise CheckpointError(f"{source}: token {token[:40]!r} has id {idx!r} (expected a "
                                  "non-negative integer)")
    return vocab


def _merges_from_text(path: Path) -> list[tuple[str, str]]:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path}: not UTF-8 text (byte {err.start})") from None
    merges = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise CheckpointError(f"{path}: line {n}: bad merge {line[:40]!r} (expected two "
                                  "tokens separated by a space)")
        merges.append((parts[0], parts[1]))
    return merges


def _bpe_from_tokenizer_json(path: Path,
                             root: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """vocab and merges of a byte-level BPE `tokenizer.json` (what CLIPTokenizerFast saves);
    another model (WordPiece, Unigram) or pre-tokenizer is refused naming what is supported."""
    data = read_json(path, root)
    model = data.get("model")
    kind = model.get("type") if isinstance(model, dict) else None
    if kind != "BPE":
        raise CheckpointError(f"{path}: key 'model.type' = {kind!r} is not supported "
                              "(supported: a byte-level BPE tokenizer, as CLIP's)")
    assert isinstance(model, dict)
    if "ByteLevel" not in json.dumps(data.get("pre_tokenizer")):
        raise CheckpointError(f"{path}: key 'pre_tokenizer' has no ByteLevel step (supported: "
                              "a byte-level BPE tokenizer, as CLIP's)")
    suffix = model.get("end_of_word_suffix")
    if suffix not in (None, "", "</w>"):
        raise CheckpointError(f"{path}: key 'model.end_of_word_suffix' = {suffix!r} is not "
                              "supported (CLIP's is '</w>')")
    vocab = _check_vocab(model.get("vocab"), path)
    merges = []
    for n, m in enumerate(model.get("merges") or []):
        pair = m.split() if isinstance(m, str) else m  # "a b" (older) or ["a", "b"] (newer)
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, str) and x for x in pair)):
            raise CheckpointError(f"{path}: key 'model.merges.{n}' = {str(m)[:40]!r} is not a "
                                  "pair of tokens")
        merges.append((pair[0], pair[1]))
    return vocab, merges


def tokenizer_bpe(folder: Path, root: Path | None = None) -> tuple[dict[str, int],
                                                                   list[tuple[str, str]]]:
    """(vocab, merges) from vocab.json + merges.txt, else from tokenizer.json (a folder saved
    with only the fast tokenizer's file). Files confined to `root` (default: the folder)."""
    root = root or folder
    if (folder / "vocab.json").exists() or (folder / "merges.txt").exists():
        for name in TOKENIZER_FILES:
            if not (folder / name).exists():
                raise CheckpointError(f"{folder}: missing {name} (a CLIP BPE tokenizer needs "
                                      f"{' and '.join(TOKENIZER_FILES)}, or tokenizer.json)")
        vocab = _check_vocab(read_json_file(folder / "vocab.json", root), folder / "vocab.json")
        merges_path = regular_file(confined(root, folder / "merges.txt"))
        if merges_path.stat().st_size > 64 << 20:
            raise CheckpointError(f"{merges_path}: larger than any merges file: refused")
        return vocab, _merges_from_text(merges_path)
    if (folder / "tokenizer.json").exists():
        return _bpe_from_tokenizer_json(folder / "tokenizer.json", root)
    raise CheckpointError(f"{folder}: no tokenizer files (expected vocab.json and merges.txt, "
                          "or tokenizer.json)")


def tokenizer_spec(folder: Path, max_length: int, vocab_size: int | None = None,
                   root: Path | None = None) -> dict[str, Any]:
    """How to tokenize, from the pipeline's tokenizer folder: the special tokens and their ids,
    max length, truncation, padding, lower-casing. Plain data (the manifest carries it). Every
    value is checked here (ids within the text encoder's `vocab_size` when given), and the BPE
    is built once, so a tokenizer that cannot work is refused when the recipe loads."""
    root = root or folder
    vocab, merges = tokenizer_bpe(folder, root)
    conf: dict[str, Any] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        if (folder / name).exists():
            conf.update({k: (v, folder / name) for k, v in read_json(folder / name, root).items()
                         if v is not None})

    def value(key: str) -> Any:
        return conf[key][0] if key in conf else None

    def where(key: str) -> Path:
        return conf[key][1] if key in conf else folder / "tokenizer_config.json"

    cls = value("tokenizer_class") or "CLIPTokenizer"
    if cls not in COMPONENT_CLASSES["tokenizer"]:
        raise CheckpointError(f"{where('tokenizer_class')}: 'tokenizer_class' = {cls!r} is not "
                              "supported (supported: CLIPTokenizer, CLIPTokenizerFast)")
    defaults = {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "pad": "<|endoftext|>",
                "unk": "<|endoftext|>"}
    tokens = {role: _token_text(value(f"{role}_token"), where(f"{role}_token"),
                                f"{role}_token") or default
              for role, default in defaults.items()}
    vocab_file = folder / ("vocab.json" if (folder / "vocab.json").exists() else "tokenizer.json")
    ids = {}
    for role, text in tokens.items():
        if text not in vocab:
            raise CheckpointError(f"{vocab_file}: the {role} token {text!r} is not in the "
                                  "vocabulary")
        ids[role] = vocab[text]
    if vocab_size is not None and max(vocab.values()) >= vocab_size:
        worst = max(vocab, key=vocab.__getitem__)
        raise CheckpointError(f"{vocab_file}: token {worst[:40]!r} has id {vocab[worst]}, "
                              f"beyond the text encoder's vocab_size {vocab_size}")
    model_max = value("model_max_length")
    if model_max is not None:
        if isinstance(model_max, bool) or not isinstance(model_max, int | float) \
                or not model_max >= 1:  # NaN fails too; transformers' "no limit" is ~1e30
            raise CheckpointError(f"{where('model_max_length')}: key 'model_max_length' must "
                                  f"be a positive integer, found {model_max!r}")
        max_length = min(max_length, int(min(model_max, MAX_TOKENS)))
    lower = value("do_lower_case")
    if lower is not None and not isinstance(lower, bool):
        raise CheckpointError(f"{where('do_lower_case')}: key 'do_lower_case' must be true or "
                              f"false, found {lower!r}")
    spec = {"kind": "clip-bpe", "tokens": tokens, "ids": ids, "max_length": max_length,
            "lower_case": True if lower is None else lower, "vocab_size": len(vocab)}
    check_bpe(vocab, merges, spec, vocab_file)
    return spec


def check_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], spec: dict[str, Any],
              source: Path) -> None:
    """Build the host tokenizer once (a merge naming a token the vocabulary lacks fails here)."""
    from mobilegen.sampling.tokenizer import tokenizer_from

    try:
        tokenizer_from(vocab, merges, spec).encode("a photo")
    except Exception as err:  # the tokenizers library's own error type is not exported
        raise CheckpointError(f"{source}: the BPE does not build ({err})") from None


# -------------------------------------------------------------------------------- the folder
def read_model_index(root: Path) -> dict[str, str]:
    """component -> class name, for the components an SD export uses; each must be present."""
    index_path = root / "model_index.json"
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a folder (expected a diffusers pipeline folder "
                              "holding model_index.json)")
    if not index_path.exists():
        raise CheckpointError(f"{root}: no model_index.json (not a diffusers pipeline folder)")
    check_tree(root, ("model_index.json", *COMPONENT_CLASSES, "scheduler"))
    index = read_json(index_path, root)
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
    return read_json(root / "scheduler" / "scheduler_config.json", root)
