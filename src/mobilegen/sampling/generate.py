"""The sampling loop an app runs: numpy + a runtime, no PyTorch model.

Export uses the same code for end-to-end parity (once with PyTorch behind the runner, once with
the artifact), so what the report measures is exactly what `mobilegen sample` does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mobilegen.sampling.runner import Runner
from mobilegen.sampling.samplers import SamplerConfig, VPSchedule, sample


def conditions(spec: dict[str, Any], n: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(cond, null_cond) for n samples from the manifest's `conditioning` entry."""
    kind = spec["kind"]
    if kind == "class":
        labels = np.resize(np.asarray(spec["labels"], dtype=np.int64), n)
        return labels, np.full(n, spec["null_label"], dtype=np.int64)
    if kind == "context":
        # No text encoder ships with a bare denoiser: a seeded Gaussian context stands in for one.
        shape = (n, *spec["shape"])
        ctx = np.random.default_rng(spec["seed"]).standard_normal(shape, dtype=np.float32)
        return ctx, np.zeros(shape, dtype=np.float32)
    return None, None


def make_denoise(runner: Runner, input_names: list[str]) -> Callable[..., np.ndarray]:
    def denoise(x: np.ndarray, t: np.ndarray, cond: np.ndarray | None) -> np.ndarray:
        feeds = {input_names[0]: x.astype(np.float32), input_names[1]: t.astype(np.float32)}
        if cond is not None:
            feeds[input_names[2]] = cond
        return np.asarray(runner(feeds), dtype=np.float32)

    return denoise


def sampler_config(entry: dict[str, Any], seed: int | None = None,
                   steps: int | None = None) -> SamplerConfig:
    return SamplerConfig(
        kind=entry["kind"],
        steps=steps or entry["steps"],
        guidance_scale=entry["guidance_scale"],
        time_spacing=entry["time_spacing"],
        seed=entry["seed"] if seed is None else seed,
    )


def generate(
    runner: Runner, component: dict[str, Any], seed: int | None = None, steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Run the manifest's sampler through `runner`; returns images (N, C, H, W) in ~[-1, 1]."""
    entry = component["sampler"]
    n = entry["num_images"]
    shape = tuple(component["sample_shape"])
    cond, null = conditions(component["conditioning"], n)
    schedule = VPSchedule(**entry["schedule"])
    names = [t["name"] for t in component["inputs"]]
    return sample(
        make_denoise(runner, names), (n, *shape), sampler_config(entry, seed, steps), schedule,
        cond=cond, null_cond=null, progress=progress,
    )


def save_grid(path: Any, images: np.ndarray, labels: list[int] | None = None,
              native: bool = False) -> None:
    """A PNG grid (one row per label set when labelled); tiny images are upscaled to be viewable
    (`native`: one image is written as it is, at its own size)."""
    import math

    from PIL import Image, PngImagePlugin

    from mobilegen.sampling.samplers import images_to_uint8, make_grid

    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "mobilegen")  # `sample --png` replaces only files with this tag
    nrow = len(labels) if labels and len(labels) <= 16 else math.ceil(math.sqrt(len(images)))
    grid = (images_to_uint8(images)[0] if native and len(images) == 1
            else make_grid(images_to_uint8(images), nrow))
    img = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    scale = 1 if native and len(images) == 1 else max(1, 256 // max(grid.shape[:2]))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(
        path, format="PNG", pnginfo=info)


def decode_latents(runner: Runner, decoder: dict[str, Any], latents: np.ndarray,
                   scaling_factor: float, shift_factor: float = 0.0) -> np.ndarray:
    """The VAE decoder step of a pipeline: latents / scaling + shift -> images (N, 3, H, W)."""
    name = decoder["inputs"][0]["name"]
    z = (np.asarray(latents, dtype=np.float64) / scaling_factor + shift_factor).astype(np.float32)
    return np.asarray(runner({name: z}), dtype=np.float32)


def generate_chain(
    unet_runner: Runner, decoder_runner: Runner, unet: dict[str, Any], decoder: dict[str, Any],
    chain: dict[str, Any], seed: int | None = None, steps: int | None = None,
) -> np.ndarray:
    """A pipeline manifest's chain: sample latents with the UNet, then decode them to images."""
    latents = generate(unet_runner, unet, seed=seed, steps=steps)
    lat = chain["latent"]
    return decode_latents(decoder_runner, decoder, latents, lat["scaling_factor"],
                          lat["shift_factor"])
