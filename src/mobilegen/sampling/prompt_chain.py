"""Prompt -> image from a Stable Diffusion pipeline's artifacts: tokenizer -> text encoder ->
UNet on SD's discrete scheduler (classifier-free guidance against the negative prompt, encoded
by the same text encoder) -> VAE decoder. numpy + the runtimes: the export's end-to-end check
runs this once with PyTorch behind the runners and once per artifact format, and
`mobilegen sample OUT --prompt ...` runs it from the output folder alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.sampling.discrete import plan_from_entry, sample_discrete
from mobilegen.sampling.generate import decode_latents, make_denoise
from mobilegen.sampling.runner import Runner
from mobilegen.sampling.tokenizer import build_tokenizer, tokenize


def load_tokenizer(root: Path, chain: dict[str, Any]) -> Any:
    """The host tokenizer from the shipped files (paths in the chain, relative to `root`)."""
    section = chain["tokenizer"]
    return build_tokenizer(root / section["files"]["vocab"], root / section["files"]["merges"],
                           section)


def encode(runner: Runner, text_encoder: dict[str, Any], ids: np.ndarray) -> np.ndarray:
    """(N, L) int64 token ids -> (N, L, D) last hidden states."""
    name = text_encoder["inputs"][0]["name"]
    return np.asarray(runner({name: ids.astype(np.int64)}), dtype=np.float32)


def generate_from_prompt(
    runners: dict[str, Runner], components: dict[str, dict[str, Any]], chain: dict[str, Any],
    tokenizer: Any, prompt: str | None = None, negative_prompt: str | None = None,
    seed: int | None = None, steps: int | None = None, num_images: int | None = None,
) -> np.ndarray:
    """Images (N, 3, H, W) in ~[-1, 1]; every argument left None takes the manifest's value."""
    sched = chain["scheduler"]
    n = num_images or sched["num_images"]
    prompt = chain["prompt"] if prompt is None else prompt
    negative = chain["negative_prompt"] if negative_prompt is None else negative_prompt
    ids = tokenize(tokenizer, [prompt] * n + [negative] * n)
    states = encode(runners["text_encoder"], components["text_encoder"], ids)  # one call, 2N
    cond, null = states[:n], states[n:]
    unet = components["unet"]
    denoise = make_denoise(runners["unet"], [t["name"] for t in unet["inputs"]])
    plan = plan_from_entry(sched, steps)
    latents = sample_discrete(denoise, (n, *unet["sample_shape"]), plan,
                              sched["seed"] if seed is None else seed, sched["guidance_scale"],
                              cond, null)
    lat = chain["latent"]
    return decode_latents(runners["decoder"], components["decoder"], latents,
                          lat["scaling_factor"], lat["shift_factor"])
