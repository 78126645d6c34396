"""SD's discrete samplers (sampling/discrete.py, numpy only) against diffusers' own schedulers:
same scheduler config, same model function, same noise -> the same latents after every step."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mobilegen.errors import ConfigError
from mobilegen.sampling import discrete
from mobilegen.sampling.discrete import (
    make_plan,
    read_scheduler_config,
    run_plan,
    schedule_from_config,
)

torch = pytest.importorskip("torch")
schedulers = pytest.importorskip("diffusers.schedulers")

# SD-1.5's scheduler_config.json (written for PNDM; every sampler reads it) and SD-2.1's (v)
SD15 = {"_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
        "beta_start": 0.00085, "num_train_timesteps": 1000, "set_alpha_to_one": False,
        "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None, "clip_sample": False}
SD21 = {**SD15, "_class_name": "DDIMScheduler", "prediction_type": "v_prediction"}
LINEAR_TRAILING = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                   "timestep_spacing": "trailing", "clip_sample": True}
LEADING = {**SD15, "timestep_spacing": "leading"}
CONFIGS = {"sd15": SD15, "sd21-v": SD21, "linear-trailing": LINEAR_TRAILING,
           "leading": LEADING}
CLASSES = {"ddim": "DDIMScheduler", "dpm++2m": "DPMSolverMultistepScheduler",
           "euler": "EulerDiscreteScheduler",
           "euler-ancestral": "EulerAncestralDiscreteScheduler"}
SHAPE = (2, 4, 6, 6)
# max abs error after every step, relative to the latents' scale where that exceeds 1: Euler
# starts at sigma_max (14.6 for SD, 157 for the linear schedule) and float32, in which diffusers
# computes, resolves 1e-5 only below 128
TOL = 1e-5


_AB = np.cumprod(1 - np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2)


def model_fn(x: np.ndarray, t: np.ndarray) -> np.ndarray:
    """A stand-in for a UNet that behaves like one: near the best epsilon guess for unit-variance
    data (sigma_t * x) plus a nonlinear term of the latents and the timestep, so latents stay at
    the scale real sampling has and every solver term is exercised."""
    t = np.asarray(t, np.float64)
    s = np.sqrt(1.0 - np.interp(t, np.arange(1000), _AB))[:, None, None, None]
    return (0.9 * s * x + 0.1 * np.sin(3.0 * x + t[:, None, None, None] / 300)).astype(np.float32)


def diffusers_run(kind: str, config: dict, steps: int, noise: np.ndarray, karras: bool,
                  seed: int) -> tuple[list[np.ndarray], np.ndarray, list[np.ndarray]]:
    cls = getattr(schedulers, CLASSES[kind])
    extra = {"use_karras_sigmas": True} if karras else {}
    sch = cls.from_config({**config, **extra})
    sch.set_timesteps(steps)
    latents = torch.from_numpy(noise) * sch.init_noise_sigma
    gen = torch.Generator().manual_seed(seed)
    trajectory, inputs = [], []
    for t in sch.timesteps:
        inp = sch.scale_model_input(latents, t)
        inputs.append(inp.numpy().copy())
        out = torch.from_numpy(model_fn(inp.numpy(), np.full(SHAPE[0], float(t), np.float32)))
        kw = {"generator": gen} if kind == "euler-ancestral" else {}
        latents = sch.step(out, t, latents, **kw).prev_sample
        trajectory.append(latents.numpy().copy())
    return trajectory, sch.timesteps.numpy().astype(np.float64), inputs


CASES = [(k, c, False) for k in CLASSES for c in CONFIGS] + [
    ("dpm++2m", "sd15", True), ("dpm++2m", "sd21-v", True), ("euler", "sd15", True),
    ("euler", "sd21-v", True)]


@pytest.mark.parametrize(("kind", "config_name", "karras"), CASES,
                         ids=[f"{k}-{c}{'-karras' if kk else ''}" for k, c, kk in CASES])
@pytest.mark.parametrize("steps", [1, 4, 20])
def test_every_step_matches_diffusers(kind: str, config_name: str, karras: bool,
                                      steps: int) -> None:
    config = CONFIGS[config_name]
    noise = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    ref, ref_ts, ref_inputs = diffusers_run(kind, config, steps, noise, karras, seed=7)
    plan = make_plan(schedule_from_config(config, kind, karras or None), steps)
    if karras and kind == "euler":  # fractional times from log-sigma interpolation: float32 ulps
        np.testing.assert_allclose(plan.timesteps, ref_ts, rtol=0, atol=1e-3)
    else:
        np.testing.assert_array_equal(plan.timesteps, ref_ts)
    gen = torch.Generator().manual_seed(7)  # the noise diffusers' ancestral step draws
    seen_inputs: list[np.ndarray] = []
    ours: list[np.ndarray] = []

    def model(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        seen_inputs.append(x)
        return model_fn(x, t)

    run_plan(plan, model, noise.astype(np.float64) * plan.init_noise_sigma,
             noise=lambda i: torch.randn(SHAPE, generator=gen).numpy(),
             on_step=lambda i, x: ours.append(x.copy()))
    assert len(ours) == len(ref) == steps
    for i, (a, b) in enumerate(zip(ours, ref, strict=True)):
        err = float(np.abs(a - b).max()) / max(1.0, float(np.abs(b).max()))
        assert err <= TOL, f"step {i}: max abs error {err:.3g} (latent scale) > {TOL}"
        # the model's input is the latents before step i times c_in: the same error, scaled
        before = ref[i - 1] if i else noise * plan.init_noise_sigma
        in_tol = TOL * max(1.0, float(np.abs(before).max())) * plan.c_in[i]
        assert float(np.abs(seen_inputs[i] - ref_inputs[i]).max()) <= max(in_tol, TOL), i


def test_sampling_draws_seeded_noise_and_guidance() -> None:
    """sample_discrete: initial noise times init_noise_sigma, CFG as one [cond; null] call."""
    plan = make_plan(schedule_from_config(SD15, "euler"), 3)
    calls: list[int] = []

    def denoise(x: np.ndarray, t: np.ndarray, c: np.ndarray | None) -> np.ndarray:
        calls.append(x.shape[0])
        assert c is not None
        return model_fn(x, t) + 0.01 * c.mean(axis=(1, 2))[:, None, None, None]

    cond, null = np.ones((2, 3, 5), np.float32), np.zeros((2, 3, 5), np.float32)
    a = discrete.sample_discrete(denoise, SHAPE, plan, 3, 7.5, cond, null)
    b = discrete.sample_discrete(denoise, SHAPE, plan, 3, 7.5, cond, null)
    np.testing.assert_array_equal(a, b)
    assert calls == [4, 4, 4, 4, 4, 4]  # 2N per step, 3 steps, twice
    c = discrete.sample_discrete(denoise, SHAPE, plan, 4, 7.5, cond, null)
    assert not np.allclose(a, c)


def test_plan_round_trips_through_the_manifest_entry() -> None:
    plan = make_plan(schedule_from_config(SD21, "dpm++2m", True), 8)
    entry = json.loads(json.dumps(discrete.sampler_entry(plan, 7.5, 0)))
    again = discrete.plan_from_entry(entry)
    np.testing.assert_array_equal(again.timesteps, plan.timesteps)
    np.testing.assert_array_equal(again.sigmas, plan.sigmas)
    assert entry["prediction"] == "v_prediction" and len(entry["constants"]["sigmas"]) == 9
    assert discrete.plan_from_entry(entry, steps=5).steps == 5


@pytest.mark.parametrize(("key", "value", "kind"), [
    ("thresholding", True, "ddim"), ("beta_schedule", "squaredcos_cap_v2", "euler"),
    ("prediction_type", "sample", "dpm++2m"), ("trained_betas", [0.1, 0.2], "ddim"),
    ("algorithm_type", "sde-dpmsolver++", "dpm++2m"), ("timestep_spacing", "odd", "euler"),
    ("rescale_betas_zero_snr", True, "euler-ancestral"), ("solver_order", 3, "dpm++2m"),
    ("interpolation_type", "log_linear", "euler"), ("final_sigmas_type", "sigma_min", "dpm++2m"),
])
def test_unimplemented_config_is_refused_naming_the_key(tmp_path, key, value, kind) -> None:
    path = tmp_path / "scheduler_config.json"
    path.write_text(json.dumps({**SD15, key: value}))
    with pytest.raises(ConfigError, match=f"'{key}'") as err:
        read_scheduler_config(path, kind)
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_keys_other_samplers_take_are_ignored_and_karras_only_where_it_exists() -> None:
    # DDIM takes no solver_order (diffusers' from_config ignores it too)
    assert schedule_from_config({**SD15, "solver_order": 3}, "ddim").kind == "ddim"
    with pytest.raises(ConfigError, match="karras"):
        schedule_from_config(SD15, "euler-ancestral", karras_sigmas=True)
    with pytest.raises(ConfigError, match="steps"):
        make_plan(schedule_from_config(SD15, "ddim"), 0)
