"""Calibration feeds for a text-to-image pipeline's components, recorded from the chain itself.

A component exported on its own calibrates on what it can make up: the UNet on a sampling run
with a seeded Gaussian stand-in for the text states, the decoder and the text encoder on their
random validation inputs. In a pipeline none of these is what the component meets: the UNet
reads the text encoder's states (a LayerNorm output, far from N(0, 1)), the decoder the UNet's
final latents. Static int8 and W8A16 ranges taken from the stand-ins clip or waste the real
ones. So before any component is exported, the PyTorch chain (the loaded weights) runs the
recipe's calibration prompts, every call of each component is recorded, and each component's
export calibrates on its own recorded calls: the UNet's stratified over the timesteps.
Seeds differ from the report's, so the end-to-end check never runs on a calibration trajectory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mobilegen.recipe import PipelineRecipe, Recipe

Feeds = dict[str, np.ndarray]
SEED = 1_000  # the first calibration run's seed (the report's chain uses the sampler's seed)


def needs_calibration(recipes: dict[str, Recipe]) -> int:
    """The most calibration feeds any component's export needs; 0: nothing to record."""
    from mobilegen.export.run import calibration_count
    from mobilegen.passes.precision import precision_plan

    return max(calibration_count(r, precision_plan(r).calibration_feeds)
               for r in recipes.values())


def record(prec: PipelineRecipe, recipes: dict[str, Recipe], out: Any,
           count: int) -> dict[str, list[Feeds]]:
    """slot -> `count` feeds recorded from the PyTorch chain on the calibration prompts (the
    tokenizer ships into `out` here, as the chain ships it later)."""
    from mobilegen.export import sd_chain
    from mobilegen.export.manifest import component_entry
    from mobilegen.export.run import load_model
    from mobilegen.models import get_family
    from mobilegen.sampling.prompt_chain import generate_from_prompt, load_tokenizer
    from mobilegen.sampling.runner import torch_runner

    assert prec.sd is not None
    comps, runners, calls = {}, {}, {}
    for slot, recipe in recipes.items():
        loaded = load_model(recipe)
        size = recipe.export_size(loaded.config)
        io = get_family(loaded.family).io_spec(loaded.config, size)
        comps[slot] = component_entry(recipe, loaded, io, size)
        calls[slot] = []
        runners[slot] = _recording(torch_runner(loaded.model, io), calls[slot])
    spec, _ = sd_chain.ship_tokenizer_and_scheduler(
        prec, comps["text_encoder"]["sequence_length"], out)
    chain = sd_chain.chain_entry(prec, comps, spec, [])
    tokenizer = load_tokenizer(out.staging, chain)
    per_prompt: list[list[Feeds]] = []
    for i, prompt in enumerate(prec.sd.calibration_prompts or [prec.sd.prompt]):
        start = len(calls["unet"])
        generate_from_prompt(runners, comps, chain, tokenizer, prompt, prec.sd.negative_prompt,
                             seed=SEED + i)
        per_prompt.append(calls["unet"][start:])
    time_input = comps["unet"]["inputs"][1]["name"]
    return {"text_encoder": _cycle(calls["text_encoder"], count),
            "unet": _spread(per_prompt, time_input, count),
            "decoder": _cycle(calls["decoder"], count)}


def _recording(runner: Callable[[Feeds], Any], into: list[Feeds]) -> Callable[[Feeds], Any]:
    def call(feeds: Feeds) -> Any:
        into.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return runner(feeds)

    return call


def _cycle(records: list[Feeds], count: int) -> list[Feeds]:
    return [records[i % len(records)] for i in range(min(count, len(records)))] if records else []


def _spread(per_prompt: list[list[Feeds]], time_input: str, count: int) -> list[Feeds]:
    """`count` UNet calls spread evenly over the timesteps from the noisiest to the cleanest,
    the prompts taken in turn (pick k: prompt k mod P, the call nearest the k-th time)."""
    times = [np.array([float(c[time_input].ravel()[0]) for c in calls]) for calls in per_prompt]
    out = []
    for k in range(count):
        p = k % len(per_prompt)
        want = times[p].max() + (times[p].min() - times[p].max()) * k / max(count - 1, 1)
        out.append(per_prompt[p][int(np.abs(times[p] - want).argmin())])
    return out


def summary(prec: PipelineRecipe, feeds: dict[str, list[Feeds]]) -> dict[str, Any]:
    """The report's account of what the quantized components calibrated on."""
    assert prec.sd is not None
    prompts = prec.sd.calibration_prompts or [prec.sd.prompt]
    return {"source": "the PyTorch chain's own calls (loaded weights), recorded per component",
            "prompts": len(prompts), "first_seed": SEED,
            "feeds": {slot: len(f) for slot, f in feeds.items()}}
