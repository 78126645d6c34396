"""CLIP's text encoder (transformers' CLIPTextModel), the text half of every Stable Diffusion.

Token ids (B, L) int64 -> last hidden state (B, L, D): what an SD pipeline feeds the UNet's
cross-attention (SD-1.x: 12 layers, 768 wide, quick-GELU; SD-2.x: OpenCLIP's 23 of 24 layers,
1024 wide, GELU). Parameter names are transformers' own (`text_model.encoder.layers.0...`), so a
pipeline's `text_encoder/model.safetensors` loads as it is; outputs match transformers' module on
the same weights (tests/test_clip_text.py).

Written for capture and for NPUs: the sequence length is fixed (max_position_embeddings, 77 for
SD), the position ids are a slice, not an input, and the causal mask is one constant added to the
attention scores (no IsNaN / Where / data-dependent masking in the graph). Padding is not
masked: SD's pipelines pad with the EOS / pad token and attend to it, so the output at every
position matches what the UNet was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

from mobilegen.errors import ConfigError
from mobilegen.signature import ModelIO, TensorSpec

# fp16-safe (|x| < 65504) and far below any attention score: exp(score - 1e4) is 0 in fp32
MASK_VALUE = -1.0e4
ACTIVATIONS = ("quick_gelu", "gelu")


# SD-1.x: 49408 / 768 / 3072 / 12 / 12 / 77; SD-2.x 1024 wide, 23 layers; SDXL's bigG 1280 / 32
BOUNDS: dict[str, tuple[float, float]] = {
    "vocab_size": (1, 1_000_000), "hidden_size": (1, 16384), "intermediate_size": (1, 65536),
    "num_hidden_layers": (1, 256), "num_attention_heads": (1, 256),
    "max_position_embeddings": (1, 4096)}


@dataclass(frozen=True)
class CLIPTextConfig:
    vocab_size: int = 49408
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    bos_token_id: int = 49406
    eos_token_id: int = 49407
    pad_token_id: int = 1

    def __post_init__(self) -> None:
        from mobilegen.models.bounds import first_problem, out_of_range

        # bounds before anything is built: num_hidden_layers = 100000 or hidden_size = 1e9
        # would allocate for minutes (or terabytes) only to be refused
        bad = first_problem(self, BOUNDS) or out_of_range(
            [("layer_norm_eps", self.layer_norm_eps)], 0.0, 1.0)
        if bad:
            raise ConfigError(bad)
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act: expected one of {ACTIVATIONS}, found "
                              f"{self.hidden_act!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by "
                              f"num_attention_heads {self.num_attention_heads}")

    @property
    def image_size(self) -> int:
        """What the export calls its size: for a text encoder, the token length."""
        return self.max_position_embeddings

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CLIPTextConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown clip-text config key '{unknown[0]}' "
                              f"(known: {', '.join(sorted(known))})")
        return cls(**d)


# ------------------------------------------------------------------------------------- blocks
class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): OpenAI CLIP's activation (SD-1.x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPEmbeddings(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(input_ids)  # (B, L, D)
        return x + self.position_embedding.weight.unsqueeze(0)  # positions 0..L-1, L fixed


class CLIPAttention(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.heads, self.scale = cfg.num_attention_heads, cfg.head_dim**-0.5
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, n, h, d // h).transpose(1, 2)  # (B, H, L, D/H)

        q, k, v = split(self.q_proj(x) * self.scale), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-2, -1) + mask  # (B, H, L, L), future positions at -1e4
        out = torch.softmax(scores, dim=-1) @ v  # (B, H, L, D/H)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class CLIPMLP(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = QuickGELU() if cfg.hidden_act == "quick_gelu" else nn.GELU()
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """Pre-norm: x + attn(ln1(x)), then x + mlp(ln2(x))."""

    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))


class CLIPTextTransformer(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.embeddings = CLIPEmbeddings(cfg)
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)


# -------------------------------------------------------------------------------------- model
class CLIPTextEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig) -> None:
        super().__init__()
        self.config = cfg
        self.text_model = CLIPTextTransformer(cfg)
        n = cfg.max_position_embeddings
        # the causal mask is a constant of the graph: 0 on and below the diagonal, -1e4 above
        mask = torch.triu(torch.full((n, n), MASK_VALUE), diagonal=1)
        self.register_buffer("causal_mask", mask[None, None], persistent=False)  # (1, 1, L, L)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        tm = self.text_model
        x = tm.embeddings(input_ids)  # (B, L, D); L = max_position_embeddings, no slicing
        for layer in tm.encoder.layers:
            x = layer(x, self.causal_mask)  # (B, L, D)
        return tm.final_layer_norm(x)  # (B, L, D): the last hidden state

    def example_inputs(self, batch: int = 1, seed: int = 0, t: float = 500.0,
                       image_size: int | None = None) -> tuple[torch.Tensor, ...]:
        """Token ids shaped like a tokenized prompt: BOS, random tokens, EOS, then padding.
        `t` (a timestep for denoisers) picks a different prompt, so validation "timesteps" are
        different prompts here. The length is always max_position_embeddings (`image_size`,
        the size other families take, is ignored)."""
        cfg = self.config
        length = cfg.max_position_embeddings
        g = torch.Generator().manual_seed(seed * 100_003 + int(t))
        ids = torch.randint(0, cfg.vocab_size, (batch, length), generator=g)
        ends = torch.randint(2, length + 1, (batch,), generator=g)  # prompt length incl. BOS/EOS
        pos = torch.arange(length)[None]
        ids = torch.where(pos >= ends[:, None], cfg.pad_token_id, ids)
        ids = torch.where(pos == ends[:, None] - 1, cfg.eos_token_id, ids)
        ids[:, 0] = cfg.bos_token_id
        return (ids.clamp(0, cfg.vocab_size - 1),)


def load_state_dict_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' state dict as this module takes it. Hub checkpoints name tensors
    `text_model.encoder...`; transformers 5 saves them without the `text_model.` prefix: both
    load. The `position_ids` buffer old checkpoints carry is dropped (positions are 0..L-1 here
    by construction)."""
    out = {}
    for k, v in sd.items():
        if k.endswith("embeddings.position_ids"):
            continue
        if k.startswith(("embeddings.", "encoder.", "final_layer_norm.")):
            k = f"text_model.{k}"
        out[k] = v
    return out


def io_spec(cfg: CLIPTextConfig, image_size: int | None = None) -> ModelIO:
    """Fixed length (max_position_embeddings, 77 for SD): `image_size` is ignored."""
    length = cfg.max_position_embeddings
    return ModelIO(
        inputs=(TensorSpec("input_ids", ("batch", length), "int64",
                           "token ids from the shipped tokenizer: BOS, prompt, EOS, padded to "
                           f"{length}", value_range=(0.0, float(cfg.vocab_size - 1))),),
        outputs=(TensorSpec("last_hidden_state", ("batch", length, cfg.hidden_size), "float32",
                            "final-layer-norm output: the UNet's encoder_hidden_states"),),
    )


def component_entry(cfg: CLIPTextConfig, recipe: Any, image_size: int) -> dict[str, Any]:
    """The text encoder's part of the manifest entry: no conditioning, so no sampler."""
    return {
        "name": "text_encoder",
        "sequence_length": cfg.max_position_embeddings,
        "hidden_size": cfg.hidden_size,
        "layouts": {"input_ids": "(batch, tokens)", "last_hidden_state": "(batch, tokens, "
                    "channels)"},
        "output_normalization": "none: feed last_hidden_state to the UNet as it is",
    }


def _variant(**kw: Any) -> CLIPTextConfig:
    return CLIPTextConfig(**kw)


VARIANTS: dict[str, CLIPTextConfig] = {
    # SD-1.x: OpenAI CLIP ViT-L/14's text tower (123M params)
    "clip-vit-l14": _variant(),
    # SD-2.x: OpenCLIP ViT-H/14's text tower as SD-2 ships it (23 of 24 layers, GELU)
    "openclip-vit-h14-sd2": _variant(hidden_size=1024, intermediate_size=4096,
                                     num_hidden_layers=23, num_attention_heads=16,
                                     hidden_act="gelu", pad_token_id=1),
    # tests and examples
    "clip-text-tiny": _variant(vocab_size=1000, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4,
                               max_position_embeddings=16, bos_token_id=998,
                               eos_token_id=999, pad_token_id=999),
}
