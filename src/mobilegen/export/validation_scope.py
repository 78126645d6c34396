"""Validation sized to the model. Above BIG_MODEL_BYTES of fp32 weights (an SD-1.5 UNet holds
3.44 GB; one PyTorch call at batch 2 takes ~15 s on 2 quiet cores and about 45 s on a shared
host) the export runs a smaller validation that is still real and still gates, and the report's
`validation` section says what was cut and why:

- parity at no more than MAX_PARITY_TIMESTEPS of the recipe's timesteps: its highest and its
  lowest t (the noisiest input and the cleanest, the two ends of the range the model sees);
- no end-to-end sampling run (steps x calls per artifact, and PyTorch's own run besides);
- latency without separate warm-up calls: the parity calls have just run the same runner (and
  the reference calls PyTorch), so they are the warm-up;
- the last parity call (the lowest t) at the latency batch (the others stay at the validation
  batch, the one sampling calls with): that call, timed, is the first of the latency runs, and
  the reference's call at it PyTorch's. It runs the same runner on inputs of the latency's
  shape right after another call, which is what a latency run without warm-up is; a call of
  15 s is not made twice to be timed once.

`validate.big_models = "full"` in the recipe keeps the recipe's validation at any size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mobilegen.recipe import Recipe

BIG_MODEL_BYTES = 1024**3
MAX_PARITY_TIMESTEPS = 2


@dataclass(frozen=True)
class ValidationScope:
    recipe: Recipe  # the recipe with the validation that runs
    reduced: bool
    cuts: list[str] = field(default_factory=list)  # one line per cut, with the recipe's value
    # t -> the batch its parity call runs at (absent: the validation batch)
    batches: dict[float, int] = field(default_factory=dict)
    # the t whose parity call (and reference call) is timed as the first latency run
    latency_from: float | None = None

    def to_dict(self, param_bytes: int) -> dict[str, Any]:
        v, lat = self.recipe.validation, self.recipe.latency
        return {"scope": "reduced" if self.reduced else "as the recipe asks",
                "param_bytes": param_bytes, "big_model_bytes": BIG_MODEL_BYTES,
                "timesteps": list(v.timesteps), "end_to_end": v.end_to_end,
                "latency_warmup": lat.warmup, "cuts": list(self.cuts),
                "parity_batches": {f"{t:g}": self.batches.get(t, v.batch) for t in v.timesteps},
                "latency_first_run_from_parity_t": self.latency_from,
                **({"note": "fp32 weights above the big-model size: a smaller validation, still "
                            "real and gated (set validate.big_models = \"full\" to run the "
                            "recipe's)"} if self.reduced else {})}


def scope(recipe: Recipe, param_bytes: int) -> ValidationScope:
    """The validation this export runs for a model of `param_bytes` fp32 weight bytes."""
    v, lat = recipe.validation, recipe.latency
    if param_bytes <= BIG_MODEL_BYTES or v.big_models == "full":
        return ValidationScope(recipe, reduced=False)
    cuts = []
    timesteps = list(v.timesteps)
    if len(timesteps) > MAX_PARITY_TIMESTEPS:
        kept = [max(timesteps), min(timesteps)]
        listed = ", ".join(f"{t:g}" for t in timesteps)
        cuts.append(f"parity at t = {kept[0]:g} and {kept[1]:g}, the highest and lowest of the "
                    f"recipe's {len(timesteps)} timesteps ({listed})")
        timesteps = kept
    if v.end_to_end:
        cuts.append("no end-to-end sampling run through the artifacts (the recipe asks for one)")
    if lat.warmup:
        cuts.append(f"latency without its {lat.warmup} warm-up call(s): the parity calls ran the "
                    "same runner just before (the reference calls PyTorch)")
    batches, latency_from = {}, None
    if len(timesteps) >= 2 and lat.runs >= 1:  # the last parity call follows another call
        latency_from = timesteps[-1]
        if lat.batch != v.batch:
            batches[latency_from] = lat.batch
        cuts.append(f"parity at t = {latency_from:g} at the latency batch ({lat.batch}; the "
                    f"other t at the validation batch, {v.batch}); that call, timed, is the "
                    f"first of the {lat.runs} latency run(s), the reference's call at it "
                    "PyTorch's")
    if not cuts:  # the recipe already asks for no more than this
        return ValidationScope(recipe, reduced=False)
    reduced = recipe.model_copy(update={
        "validation": v.model_copy(update={"timesteps": timesteps, "end_to_end": False}),
        "latency": lat.model_copy(update={"warmup": 0})})
    return ValidationScope(reduced, reduced=True, cuts=cuts, batches=batches,
                           latency_from=latency_from)
