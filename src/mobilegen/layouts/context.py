"""What every layout writer gets: the pipeline recipe, the PyTorch modules on the loaded weights
(the same weights the chain's reference runs), the component manifest entries and the staging
folder; plus the helpers they share (a file entry with sha256, the tolerance of a check)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mobilegen.export.staging import StagedOutput, sha256_file
from mobilegen.layouts import LayoutCheck

if TYPE_CHECKING:
    import torch

    from mobilegen.recipe import PipelineRecipe

# A layout artifact is fp32 of the loaded weights, so it must match its PyTorch wrapper to
# float rounding; relative to the output's scale, as a converter's reassociation gives.
REL_TOL = 1e-4


@dataclass
class LayoutContext:
    prec: PipelineRecipe
    out: StagedOutput
    models: dict[str, torch.nn.Module]  # text_encoder, unet, decoder, vae_encoder
    configs: dict[str, Any]
    components: dict[str, dict[str, Any]]  # the component manifest entries by slot
    tokenizer: dict[str, Any]  # the chain's tokenizer section

    @property
    def root(self) -> Path:
        """The source diffusers pipeline folder."""
        assert self.prec.diffusers is not None
        return self.prec.diffusers

    def file(self, rel: str, fmt: str, component: str) -> dict[str, Any]:
        p = self.out.path(rel)
        return {"path": rel, "bytes": p.stat().st_size, "sha256": sha256_file(p),
                "format": fmt, "component": component}

    def tree(self, rel: str, fmt: str, component: str) -> list[dict[str, Any]]:
        """Every file under a folder artifact (an .mlpackage), as file entries."""
        base = self.out.path(rel)
        return [self.file(str(p.relative_to(self.out.staging)), fmt, component)
                for p in sorted(base.rglob("*")) if p.is_file()]


def load_models(prec: PipelineRecipe) -> tuple[dict[str, Any], dict[str, Any]]:
    """-> (modules, configs) for the text encoder, UNet, decoder and the VAE's encoder."""
    from mobilegen.export.run import load_model
    from mobilegen.models import vae_encoder

    models, configs = {}, {}
    for slot in prec.slots():
        loaded = load_model(getattr(prec, slot))
        models[slot], configs[slot] = loaded.model.eval(), loaded.config
    assert prec.diffusers is not None
    enc_cfg, sd = vae_encoder.load_from_diffusers(prec.diffusers / "vae")
    enc = vae_encoder.VAEEncoder(enc_cfg)
    enc.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    models["vae_encoder"], configs["vae_encoder"] = enc.eval(), enc_cfg
    return models, configs


def compare(artifact: str, check: str, got: np.ndarray, want: np.ndarray) -> LayoutCheck:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        return LayoutCheck(artifact, check, False, None,
                           f"shape {list(got.shape)}, expected {list(want.shape)}")
    err = float(np.abs(got - want).max())
    scale = float(np.abs(want).max()) or 1.0
    ok = bool(np.isfinite(got).all()) and err <= REL_TOL * max(scale, 1.0)
    return LayoutCheck(artifact, check, ok, err,
                       f"max abs error {err:.3g} (limit {REL_TOL * max(scale, 1.0):.3g})")


# SD-1.x's training schedule, which the consumers' own samplers hard-code (litert-torch's
# util.get_alphas_cumprod; Apple's Scheduler.swift defaults)
SD_SCHEDULE = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
               "num_train_timesteps": 1000, "prediction_type": "epsilon"}


def sd_schedule_problem(root: Path, layout: str, samplers: str) -> str | None:
    """Why the folder's scheduler config is not the schedule `samplers` hard-code, or None."""
    from mobilegen.checkpoints.pipeline_folder import read_json

    sched = read_json(root / "scheduler" / "scheduler_config.json")
    for key, want in SD_SCHEDULE.items():
        found = sched.get(key, "epsilon" if key == "prediction_type" else None)
        if found != want and not (isinstance(want, float) and isinstance(found, float)
                                  and abs(found - want) < 1e-9):
            return (f"{layout} needs SD-1.x's schedule ({samplers} hard-code it): "
                    f"scheduler/scheduler_config.json {key} is {found!r}, expected {want!r}")
    return None


def consumer_decoder(dec: Any, cfg: Any, consumer_scale: float) -> Any:
    """The VAE decoder as a consumer feeds it: latents / `consumer_scale` (diffusers' and Apple's
    hard-coded 0.18215; 1.0 where the consumer passes the sampler's latents as they are); the
    VAE's own scaling and shift are applied inside, so the decoder sees latents / scale + shift."""
    import torch

    mul, add = consumer_scale / cfg.latent_scaling_factor, cfg.latent_shift_factor

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dec = dec

        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return self.dec(z if (mul, add) == (1.0, 0.0) else z * mul + add)

    return Decoder().eval()
