"""A tiny random Stable Diffusion pipeline folder, written the way diffusers / transformers ship
one: model_index.json, text_encoder/ (CLIPTextModel), tokenizer/ (a tiny byte-level BPE vocab and
merges made here), unet/, vae/, scheduler/. Nothing is downloaded."""

from __future__ import annotations

import json
from pathlib import Path

WORDS = ["a", "photo", "of", "the", "cat", "dog", "red", "blue", "car", "on", "beach", "painting"]
HIDDEN = 32
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085,
                  "num_train_timesteps": 1000, "set_alpha_to_one": False,
                  "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                  "clip_sample": False}


# the text-to-image recipe the tests export (test_sd_pipeline, the bad-input corpus's `sample`)
PROMPT_RECIPE = """name = "sd-tiny-prompt"
[pipeline]
diffusers = "pipe"
prompt = "a photo of the cat"
[pipeline.text_encoder]
latency = {warmup = 1, runs = 2}
[pipeline.unet]
validate = {timesteps = [999.0, 1.0]}
latency = {warmup = 1, runs = 2}
[pipeline.decoder]
validate = {timesteps = [0.0]}
latency = {warmup = 1, runs = 2}
[sampler]
kind = "dpm++2m"
steps = 4
guidance_scale = 7.5
"""


# the text-to-image recipe the consumer-layout tests export (test_layouts, test_layout_consumers):
# `layout` and `extra` (more [pipeline] keys) are filled in; one validation timestep, one timing
LAYOUT_RECIPE = """name = "sd-tiny-layouts"
[pipeline]
diffusers = "pipe"
prompt = "a photo of the cat"
layout = {layout}{extra}
[pipeline.text_encoder]
validate = {{timesteps = [1.0]}}
latency = {{warmup = 0, runs = 1}}
[pipeline.unet]
validate = {{timesteps = [999.0]}}
latency = {{warmup = 0, runs = 1}}
[pipeline.decoder]
validate = {{timesteps = [0.0]}}
latency = {{warmup = 0, runs = 1}}
[sampler]
kind = "dpm++2m"
steps = 3
num_images = 1
"""


def write_tokenizer(folder: Path) -> dict[str, int]:
    """Every byte alone and as a word end, one merge chain per word, then the two specials."""
    from mobilegen.sampling.word_bpe import word_bpe

    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = word_bpe(WORDS)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", "lstrip": False,
                      "normalized": True, "rstrip": False, "single_word": False},
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>"}))
    return vocab


def write_text_encoder(folder: Path, vocab: dict[str, int], hidden_act: str = "quick_gelu",
                       seed: int = 0) -> None:
    import torch
    import transformers

    cfg = transformers.CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=HIDDEN, intermediate_size=2 * HIDDEN,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
        hidden_act=hidden_act, bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(seed)
    model = transformers.CLIPTextModel(cfg).eval()
    with torch.no_grad():  # off the init, so layer norms and biases matter
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.save_pretrained(folder)


# UNet widths: the default tiny UNet, and SD-1.x's 320-wide first stage that litert-torch's SD
# pipeline needs (its time embedding is (1, 320)); cross-attention at the second stage only
UNET_WIDTHS = {"tiny": (16, 32), "sd-time": (320, 16)}


def write_unet_and_vae(root: Path, seed: int = 0, unet: str = "tiny") -> None:
    import diffusers
    import torch

    torch.manual_seed(seed)
    blocks = ((("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"))
              if unet == "tiny" else
              (("DownBlock2D", "CrossAttnDownBlock2D"), ("CrossAttnUpBlock2D", "UpBlock2D")))
    unet_model = diffusers.UNet2DConditionModel(
        sample_size=8, block_out_channels=UNET_WIDTHS[unet], layers_per_block=1,
        down_block_types=blocks[0], up_block_types=blocks[1], cross_attention_dim=HIDDEN,
        attention_head_dim=2, norm_num_groups=8)
    vae = diffusers.AutoencoderKL(
        block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=16)
    with torch.no_grad():
        for p in [*unet_model.parameters(), *vae.parameters()]:
            p.add_(0.02 * torch.randn_like(p))
    unet_model.save_pretrained(root / "unet")
    vae.save_pretrained(root / "vae")


def write_tiny_pipeline(root: Path, scheduler: dict | None = None, unet: str = "tiny") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    vocab = write_tokenizer(root / "tokenizer")
    write_text_encoder(root / "text_encoder", vocab)
    write_unet_and_vae(root, unet=unet)
    (root / "scheduler").mkdir(exist_ok=True)
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(scheduler or SD15_SCHEDULER))
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "PNDMScheduler"], "safety_checker": [None, None],
        "feature_extractor": [None, None]}))
    return root
