"""CLIP's tokenizer on the host, built with the `tokenizers` library from the vocab.json and
merges.txt that ship with the artifacts, configured exactly as the manifest's `tokenizer` section
says (the same normalizer, pre-tokenizer and BPE as transformers' CLIPTokenizer). An app does the
same in Swift / Kotlin from those files, or loads the shipped tokenizer.json directly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

# transformers' CLIPTokenizer, stage by stage (the manifest repeats these for app teams)
SPLIT_PATTERN = (r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                 r"""[\p{N}]|[^\s\p{L}\p{N}]+""")
END_OF_WORD = "</w>"


def read_merges(path: Path) -> list[tuple[str, str]]:
    merges = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}: bad merge line {line[:40]!r} (expected two tokens)")
        merges.append((parts[0], parts[1]))
    return merges


def build_tokenizer(vocab_path: Path, merges_path: Path, spec: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` that pads and truncates to spec["max_length"] with BOS / EOS."""
    vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    return tokenizer_from(vocab, read_merges(merges_path), spec)


def tokenizer_from(vocab: dict[str, int], merges: list[tuple[str, str]],
                   spec: dict[str, Any]) -> Any:
    """build_tokenizer from the vocabulary and merges already read."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    tokens, ids = spec["tokens"], spec["ids"]
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None,
                        continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD,
                        fuse_unk=False, unk_token=tokens["unk"]))
    norm = [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " ")]
    tok.normalizer = normalizers.Sequence(norm + ([normalizers.Lowercase()]
                                                  if spec["lower_case"] else []))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(sorted(set(tokens.values())))
    tok.post_processor = processors.RobertaProcessing(
        (tokens["eos"], ids["eos"]), (tokens["bos"], ids["bos"]), trim_offsets=False,
        add_prefix_space=False)
    tok.enable_truncation(max_length=spec["max_length"])
    tok.enable_padding(length=spec["max_length"], pad_id=ids["pad"], pad_token=tokens["pad"])
    return tok


def tokenize(tokenizer: Any, prompts: list[str]) -> np.ndarray:
    """(N, max_length) int64 token ids: BOS, the prompt, EOS, padding (truncated to fit)."""
    return np.array([e.ids for e in tokenizer.encode_batch(prompts)], dtype=np.int64)


def manifest_section(spec: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
    """The manifest's `tokenizer` entry: enough to re-implement it without this code."""
    return {
        **spec, "files": files,
        "normalization": ["NFC", "replace runs of whitespace with one space"]
                         + (["lower-case"] if spec["lower_case"] else []),
        "pre_tokenization": {"split": SPLIT_PATTERN, "split_behavior": "keep the matches",
                             "then": "byte-level (GPT-2 byte-to-unicode), no prefix space"},
        "bpe": {"merges": files.get("merges"), "end_of_word_suffix": END_OF_WORD,
                "unknown": spec["tokens"]["unk"]},
        "template": "[bos] prompt tokens [eos], truncated to max_length (BOS and EOS kept), "
                    "then right-padded with the pad id to max_length",
        "output": {"dtype": "int64", "shape": ["batch", spec["max_length"]]},
        "host_implementation": "the `tokenizers` library (mobilegen.sampling.tokenizer); "
                               "tokenizer.json loads in tokenizers, swift-transformers, DJL",
    }
