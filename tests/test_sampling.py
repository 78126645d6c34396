"""Samplers against denoisers whose exact answer is known.

For data that is a single point c, the exact epsilon is (x - alpha c) / sigma, and every sampler
must land on c. For data ~ N(0, s^2 I) the exact epsilon is sigma x / (alpha^2 s^2 + sigma^2) and
the samples' spread must match s.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from mobilegen.sampling.samplers import (
    SAMPLER_KINDS,
    SamplerConfig,
    VPSchedule,
    images_to_uint8,
    make_grid,
    sample,
    sampler_constants,
    timesteps,
)

SCHED = VPSchedule()


def t_of(t_model: np.ndarray) -> np.ndarray:
    return t_model.astype(np.float64) / SCHED.time_scale


def delta_denoiser(c: float):
    def denoise(x, t_model, cond):
        t = t_of(t_model).reshape(-1, *([1] * (x.ndim - 1)))
        return ((x - SCHED.alpha(t) * c) / SCHED.sigma(t)).astype(np.float32)
    return denoise


def gaussian_denoiser(s: float):
    def denoise(x, t_model, cond):
        t = t_of(t_model).reshape(-1, *([1] * (x.ndim - 1)))
        a, sig = SCHED.alpha(t), SCHED.sigma(t)
        return (sig * x / (a**2 * s**2 + sig**2)).astype(np.float32)
    return denoise


def test_schedule_identities():
    t = np.linspace(SCHED.eps, 1.0, 50)
    np.testing.assert_allclose(SCHED.alpha(t) ** 2 + SCHED.sigma(t) ** 2, 1.0, atol=1e-12)
    np.testing.assert_allclose(SCHED.t_of_lambda(SCHED.lambda_(t)), t, rtol=1e-8)
    assert SCHED.sigma(1.0) > 0.99 and SCHED.sigma(SCHED.eps) < 0.02
    assert VPSchedule(**SCHED.to_dict()) == SCHED


@pytest.mark.parametrize("spacing", ["uniform", "logsnr"])
def test_timesteps_run_from_one_to_eps(spacing):
    ts = timesteps(SCHED, SamplerConfig(steps=7, time_spacing=spacing))
    assert len(ts) == 8 and ts[0] == 1.0 and ts[-1] == SCHED.eps
    assert np.all(np.diff(ts) < 0)


@pytest.mark.parametrize("kind", SAMPLER_KINDS)
def test_every_sampler_lands_on_a_point_mass(kind):
    steps = 200 if kind == "euler-maruyama" else 20
    x = sample(delta_denoiser(0.3), (64, 1, 2, 2), SamplerConfig(kind=kind, steps=steps))
    assert x.dtype == np.float32
    # samples stop at t = eps, where sigma ~ 0.01 of the starting noise is left by design
    assert np.abs(x - 0.3).max() < 5 * SCHED.sigma(SCHED.eps)


@pytest.mark.parametrize("kind", SAMPLER_KINDS)
def test_gaussian_spread_is_recovered(kind):
    # first-order samplers need many steps on the uniform grid; DPM-Solver++ few on log-SNR
    cfg = {"euler-maruyama": SamplerConfig(kind=kind, steps=300, time_spacing="uniform", seed=1),
           "ddim": SamplerConfig(kind=kind, steps=300, time_spacing="uniform", seed=1),
           "dpm++2m": SamplerConfig(kind=kind, steps=20, time_spacing="logsnr", seed=1)}[kind]
    x = sample(gaussian_denoiser(0.5), (4096, 4), cfg)
    assert abs(x.std() - 0.5) < 0.02


def test_dpm_solver_beats_ddim_at_few_steps():
    shape, errs = (256, 4), {}
    for kind in ("ddim", "dpm++2m"):
        x = sample(gaussian_denoiser(0.5), shape, SamplerConfig(kind=kind, steps=8))
        ref = sample(gaussian_denoiser(0.5), shape, SamplerConfig(kind=kind, steps=500))
        errs[kind] = np.abs(x - ref).max()
    assert errs["dpm++2m"] < 0.25 * errs["ddim"]


@pytest.mark.parametrize("kind", SAMPLER_KINDS)
def test_deterministic_under_seed(kind):
    den = gaussian_denoiser(0.7)
    a = sample(den, (3, 1, 4, 4), SamplerConfig(kind=kind, steps=5, seed=3))
    b = sample(den, (3, 1, 4, 4), SamplerConfig(kind=kind, steps=5, seed=3))
    c = sample(den, (3, 1, 4, 4), SamplerConfig(kind=kind, steps=5, seed=4))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_guidance_is_one_call_on_cond_then_null():
    calls = []
    targets = {0: 0.5, 9: -0.5}  # label 9 is the null label

    def denoise(x, t_model, cond):
        calls.append((x.shape[0], cond.copy()))
        t = t_of(t_model).reshape(-1, 1)
        c = np.array([targets[int(k)] for k in cond]).reshape(-1, 1)
        return ((x - SCHED.alpha(t) * c) / SCHED.sigma(t)).astype(np.float32)

    cond, null = np.zeros(2, np.int64), np.full(2, 9, np.int64)
    x = sample(denoise, (2, 1), SamplerConfig(steps=10, guidance_scale=3.0), cond=cond,
               null_cond=null)
    assert len(calls) == 10
    assert all(n == 4 and list(c) == [0, 0, 9, 9] for n, c in calls)
    # guidance 3 extrapolates past the conditional target: 0.5 + 2 * (0.5 - -0.5) = 2.5
    np.testing.assert_allclose(x, 2.5, atol=0.05)
    # without guidance, one call per step on the conditional batch only
    calls.clear()
    sample(denoise, (2, 1), SamplerConfig(steps=3), cond=cond, null_cond=null)
    assert [n for n, _ in calls] == [2, 2, 2]


def test_guidance_without_null_is_refused():
    with pytest.raises(ValueError, match="null_cond"):
        sample(delta_denoiser(0.0), (1, 1), SamplerConfig(steps=2, guidance_scale=2.0),
               cond=np.zeros(1, np.int64))


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="sampler kind"):
        SamplerConfig(kind="heun")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps"):
        SamplerConfig(steps=0)


def test_constants_describe_the_loop():
    cfg = SamplerConfig(steps=4, guidance_scale=2.0)
    k = sampler_constants(cfg, SCHED)
    assert len(k["t"]) == len(k["alpha"]) == len(k["sigma"]) == 5
    assert k["model_t"][0] == pytest.approx(1000.0) and k["schedule"] == SCHED.to_dict()
    np.testing.assert_allclose(np.square(k["alpha"]) + np.square(k["sigma"]), 1.0, atol=1e-12)


def test_images_and_grid():
    x = np.array([-1.0, 0.0, 1.0, 2.0], np.float32).reshape(1, 1, 2, 2)
    u8 = images_to_uint8(x)
    assert u8.shape == (1, 2, 2, 1) and u8.ravel().tolist() == [0, 128, 255, 255]
    grid = make_grid(np.repeat(u8, 5, axis=0), nrow=3)
    assert grid.shape == (2 + 2 * 4, 2 + 3 * 4, 1)
    assert grid[2:4, 2:4, 0].tolist() == [[0, 128], [255, 255]]


def test_sampling_does_not_import_torch():
    code = ("import sys, mobilegen.sampling.samplers, mobilegen.sampling.generate; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
