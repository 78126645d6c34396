"""Stable Diffusion's discrete-time schedule and the samplers people use with it, in numpy only.

An SD UNet was trained on 1,000 discrete timesteps with a `scaled_linear` (SD-1.x, SD-2.x) or
`linear` beta schedule; it predicts epsilon (SD-1.x, SD-2 base) or v (SD-2.x 768). The pipeline's
`scheduler/scheduler_config.json` says which. This module reads that file and runs DDIM,
DPM-Solver++ 2M (optionally on Karras sigmas), Euler and Euler ancestral exactly as diffusers'
DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler and
EulerAncestralDiscreteScheduler do (tests/test_discrete_schedulers.py checks every step against
them). What a config asks for and this module does not implement is refused with one line naming
the key. Nothing here imports torch: an app ships this loop next to the artifacts.

Conventions: `timesteps[i]` is the model time fed to the UNet at step i (float; DDIM and DPM use
integers, Euler may not); `c_in[i]` scales the latents before that call (Euler's 1/sqrt(s^2+1));
initial latents are `standard_normal(shape) * init_noise_sigma`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import ConfigError
from mobilegen.sampling.samplers import _guided

DISCRETE_KINDS: tuple[str, ...] = ("ddim", "dpm++2m", "euler", "euler-ancestral")
MAX_TRAIN_TIMESTEPS = 100_000  # SD trains on 1,000; 1e12 would allocate terabytes of betas
DIFFUSERS_CLASS = {"ddim": "DDIMScheduler", "dpm++2m": "DPMSolverMultistepScheduler",
                   "euler": "EulerDiscreteScheduler",
                   "euler-ancestral": "EulerAncestralDiscreteScheduler"}
# What diffusers' own class takes when the config does not say (from_config semantics): a
# config written for PNDMScheduler (SD-1.5's) read by DDIM gets DDIM's defaults for the rest.
_COMMON = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
           "beta_schedule": "linear", "trained_betas": None, "prediction_type": "epsilon",
           "steps_offset": 0, "rescale_betas_zero_snr": False}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "ddim": {**_COMMON, "timestep_spacing": "leading", "clip_sample": True,
             "clip_sample_range": 1.0, "set_alpha_to_one": True, "thresholding": False},
    "dpm++2m": {**_COMMON, "timestep_spacing": "linspace", "solver_order": 2,
                "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
                "thresholding": False, "use_karras_sigmas": False,
                "use_exponential_sigmas": False, "use_beta_sigmas": False,
                "use_lu_lambdas": False, "use_flow_sigmas": False, "final_sigmas_type": "zero",
                "lambda_min_clipped": float("-inf"), "variance_type": None,
                "use_dynamic_shifting": False},
    "euler": {**_COMMON, "timestep_spacing": "linspace", "interpolation_type": "linear",
              "use_karras_sigmas": False, "use_exponential_sigmas": False,
              "use_beta_sigmas": False, "sigma_min": None, "sigma_max": None,
              "timestep_type": "discrete", "final_sigmas_type": "zero"},
    "euler-ancestral": {**_COMMON, "timestep_spacing": "linspace"},
}
# key -> the only values implemented here (anything else is refused naming the key)
_ONLY: dict[str, tuple[Any, ...]] = {
    "beta_schedule": ("linear", "scaled_linear"), "trained_betas": (None,),
    "prediction_type": ("epsilon", "v_prediction"), "rescale_betas_zero_snr": (False,),
    "timestep_spacing": ("leading", "linspace", "trailing"), "thresholding": (False,),
    "solver_order": (2,), "algorithm_type": ("dpmsolver++",), "solver_type": ("midpoint",),
    "use_exponential_sigmas": (False,), "use_beta_sigmas": (False,), "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,), "final_sigmas_type": ("zero",),
    "lambda_min_clipped": (float("-inf"),), "variance_type": (None,),
    "use_dynamic_shifting": (False,), "interpolation_type": ("linear",),
    "sigma_min": (None,), "sigma_max": (None,), "timestep_type": ("discrete",),
    "use_karras_sigmas": (False, True),
}


@dataclass(frozen=True)
class DiscreteSchedule:
    """The training schedule plus the sampler options a scheduler config fixes."""

    kind: str
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    clip_sample: bool = False  # DDIM: clamp the predicted x0 to +-clip_sample_range
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True  # DDIM: alpha_bar after the last step (1, or alpha_bar[0])
    karras_sigmas: bool = False  # dpm++2m, euler: Karras et al. rho = 7 sigma spacing

    def __post_init__(self) -> None:
        from mobilegen.models.bounds import out_of_range

        # a schedule from a config file or a manifest: 1e12 timesteps would allocate terabytes,
        # an unknown beta_schedule must not be computed as another one
        bad = (out_of_range([("num_train_timesteps", self.num_train_timesteps)], 1,
                            MAX_TRAIN_TIMESTEPS)
               or out_of_range([("beta_start", self.beta_start), ("beta_end", self.beta_end)],
                               0.0, 0.999)
               or out_of_range([("steps_offset", self.steps_offset)], 0,
                               max(self.num_train_timesteps - 1, 0))
               or out_of_range([("clip_sample_range", self.clip_sample_range)], 0.0, 1e4))
        if bad is None and self.beta_start > self.beta_end:
            bad = (f"key 'beta_start' ({self.beta_start}) must not exceed 'beta_end' "
                   f"({self.beta_end})")
        for key, allowed in (("beta_schedule", _ONLY["beta_schedule"]),
                             ("prediction_type", _ONLY["prediction_type"]),
                             ("timestep_spacing", _ONLY["timestep_spacing"])):
            if bad is None and getattr(self, key) not in allowed:
                bad = (f"key '{key}' = {getattr(self, key)!r} is not supported (supported: "
                       f"{', '.join(allowed)})")
        for key in ("clip_sample", "set_alpha_to_one", "karras_sigmas"):
            if bad is None and not isinstance(getattr(self, key), bool):
                bad = f"key '{key}' must be true or false, found {getattr(self, key)!r}"
        if bad:
            raise ConfigError(f"scheduler: {bad}")
        if self.kind not in DISCRETE_KINDS:
            raise ConfigError(f"sampler kind: expected one of {DISCRETE_KINDS} on a discrete "
                              f"schedule, found {self.kind!r}")
        if self.karras_sigmas and self.kind not in ("dpm++2m", "euler"):
            raise ConfigError(f"karras_sigmas: only dpm++2m and euler take Karras sigmas, "
                              f"not {self.kind}")

    def alphas_cumprod(self) -> np.ndarray:
        """float32, as diffusers computes it: betas in float32, their running product accumulated in
        float64 (torch's CPU cumprod does) and rounded to float32."""
        n = self.num_train_timesteps
        if self.beta_schedule == "linear":
            betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float32)
        else:
            betas = np.linspace(self.beta_start**0.5, self.beta_end**0.5, n,
                                dtype=np.float32) ** 2
        return np.cumprod((1.0 - betas).astype(np.float32), dtype=np.float64).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def schedule_from_config(config: dict[str, Any], kind: str, karras_sigmas: bool | None = None,
                         source: str = "scheduler_config.json") -> DiscreteSchedule:
    """Read a diffusers scheduler config for sampler `kind` as diffusers' own class for that kind
    would (its defaults for absent keys; keys it does not take are ignored, as from_config does).
    `karras_sigmas` (from the recipe) overrides the config's `use_karras_sigmas`."""
    if kind not in _DEFAULTS:
        raise ConfigError(f"sampler kind: expected one of {DISCRETE_KINDS}, found {kind!r}")
    cfg = {k: config.get(k, d) for k, d in _DEFAULTS[kind].items()}
    if karras_sigmas is not None and "use_karras_sigmas" in cfg:
        cfg["use_karras_sigmas"] = karras_sigmas
    for key, allowed in _ONLY.items():
        if key in cfg and not any(_same(cfg[key], a) for a in allowed):
            raise ConfigError(f"{source}: '{key}' = {cfg[key]!r} is not supported by the "
                              f"{kind} sampler here (supported: "
                              f"{', '.join(repr(a) for a in allowed)})")
    if karras_sigmas and "use_karras_sigmas" not in cfg:
        raise ConfigError(f"karras_sigmas: the {kind} sampler takes no Karras sigmas "
                          "(dpm++2m and euler do)")
    try:  # values as the file has them: the schedule checks type and range, naming the key
        return DiscreteSchedule(
            kind=kind, num_train_timesteps=cfg["num_train_timesteps"],
            beta_start=cfg["beta_start"], beta_end=cfg["beta_end"],
            beta_schedule=cfg["beta_schedule"], prediction_type=cfg["prediction_type"],
            timestep_spacing=cfg["timestep_spacing"], steps_offset=cfg["steps_offset"],
            clip_sample=cfg.get("clip_sample", False),
            clip_sample_range=cfg.get("clip_sample_range", 1.0),
            set_alpha_to_one=cfg.get("set_alpha_to_one", True),
            karras_sigmas=cfg.get("use_karras_sigmas", False))
    except ConfigError as err:
        raise ConfigError(f"{source}: {str(err).removeprefix('scheduler: ')}") from None


def _same(value: Any, allowed: Any) -> bool:
    if isinstance(allowed, bool) or allowed is None:
        return value is allowed or (allowed is None and value is None)
    return bool(value == allowed)


def read_scheduler_config(path: str | Path, kind: str,
                          karras_sigmas: bool | None = None) -> DiscreteSchedule:
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"{path}: unreadable scheduler config ({err})") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    return schedule_from_config(config, kind, karras_sigmas, str(path))


# ------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class DiscretePlan:
    """Everything the loop needs for one step count: an app can run it from these numbers."""

    schedule: DiscreteSchedule
    steps: int
    timesteps: np.ndarray  # (steps,) model time per step
    c_in: np.ndarray  # (steps,) latent scale before each model call
    init_noise_sigma: float
    sigmas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (steps+1,)
    alpha_prod: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # DDIM
    alpha_prod_prev: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def constants(self) -> dict[str, Any]:
        out: dict[str, Any] = {"timesteps": [float(t) for t in self.timesteps],
                               "c_in": [float(c) for c in self.c_in],
                               "init_noise_sigma": float(self.init_noise_sigma)}
        if self.sigmas.size:
            out["sigmas"] = [float(s) for s in self.sigmas]
        if self.alpha_prod.size:
            out["alpha_prod_t"] = [float(a) for a in self.alpha_prod]
            out["alpha_prod_t_prev"] = [float(a) for a in self.alpha_prod_prev]
        return out


def _spaced(s: DiscreteSchedule, steps: int, dtype: Any) -> np.ndarray:
    """DDIM / Euler timestep spacing (diffusers' set_timesteps), descending."""
    n = s.num_train_timesteps
    if s.timestep_spacing == "linspace":
        if dtype == np.int64:  # DDIM rounds; Euler keeps the fractions
            return np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
        return np.linspace(0, n - 1, steps, dtype=np.float32)[::-1].copy()
    if s.timestep_spacing == "leading":
        ratio = n // steps
        ts = (np.arange(0, steps) * ratio).round()[::-1].copy().astype(dtype)
        return ts + s.steps_offset
    ts = np.round(np.arange(n, 0, -n / steps)).astype(dtype)
    return ts - 1


def _karras(sigmas_desc: np.ndarray, steps: int) -> np.ndarray:
    rho = 7.0
    lo, hi = float(sigmas_desc[-1]) ** (1 / rho), float(sigmas_desc[0]) ** (1 / rho)
    return (hi + np.linspace(0, 1, steps) * (lo - hi)) ** rho


def _sigma_to_t(sigma: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma (log-linear interpolation, as diffusers)."""
    log_sigma = np.log(np.maximum(sigma, 1e-10))
    dists = log_sigma - log_sigmas[:, np.newaxis]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    lo_v, hi_v = log_sigmas[low], log_sigmas[low + 1]
    w = np.clip((lo_v - log_sigma) / (lo_v - hi_v), 0, 1)
    return ((1 - w) * low + w * (low + 1)).reshape(sigma.shape)


def make_plan(s: DiscreteSchedule, steps: int) -> DiscretePlan:
    """The plan for `steps` steps; refused when those steps would repeat a timestep (DPM's
    step size would be 0 and its update NaN: 1000 steps of dpm++2m on 1000 timesteps)."""
    if isinstance(steps, bool) or not isinstance(steps, int) \
            or not 1 <= steps <= s.num_train_timesteps:
        raise ConfigError(f"steps: expected 1..{s.num_train_timesteps}, found {steps!r}")
    plan = _make_plan(s, steps)
    order = plan.sigmas[:-1] if s.karras_sigmas else plan.timesteps  # Karras: t is rounded
    repeats = np.flatnonzero(np.diff(order) >= 0)
    if repeats.size:
        raise ConfigError(f"steps: {steps} {s.kind} steps repeat timestep "
                          f"{plan.timesteps[repeats[0]]:g} on a schedule of "
                          f"{s.num_train_timesteps} training timesteps ({s.timestep_spacing} "
                          "spacing): use fewer steps")
    for name, values in plan.constants().items():
        if not np.isfinite(np.asarray(values, dtype=np.float64)).all():
            raise ConfigError(f"steps: {steps} {s.kind} steps give non-finite {name} on this "
                              "schedule")
    return plan


def _make_plan(s: DiscreteSchedule, steps: int) -> DiscretePlan:
    ac = s.alphas_cumprod()
    all_sigmas = ((1 - ac) / ac) ** 0.5  # float32, ascending in t
    ones = np.ones(steps)
    if s.kind == "ddim":
        ts = _spaced(s, steps, np.int64)
        if ts.max() >= s.num_train_timesteps:  # leading spacing + steps_offset ran past the end
            raise ConfigError(f"steps: {steps} ddim steps with steps_offset {s.steps_offset} "
                              f"reach timestep {int(ts.max())}, past the schedule's "
                              f"{s.num_train_timesteps}: use fewer steps")
        prev = ts - s.num_train_timesteps // steps
        final = np.float32(1.0) if s.set_alpha_to_one else ac[0]
        a_prev = np.array([ac[p] if p >= 0 else final for p in prev], dtype=np.float32)
        return DiscretePlan(s, steps, ts.astype(np.float64), ones, 1.0,
                            alpha_prod=ac[ts], alpha_prod_prev=a_prev)
    if s.kind == "dpm++2m":
        n = s.num_train_timesteps
        ts = np.linspace(0, n - 1, steps + 1).round()[::-1][:-1].copy().astype(np.int64) \
            if s.timestep_spacing == "linspace" else _dpm_spacing(s, steps)
        if s.karras_sigmas:
            sig = _karras(np.flip(all_sigmas).copy(), steps)
            ts = np.array([_sigma_to_t(x, np.log(all_sigmas)) for x in sig]).round()
        else:
            sig = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
        sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
        return DiscretePlan(s, steps, ts.astype(np.int64).astype(np.float64), ones, 1.0,
                            sigmas=sigmas)
    ts = _spaced(s, steps, np.float32)
    sig = np.interp(ts, np.arange(len(all_sigmas)), all_sigmas)
    if s.karras_sigmas:  # euler only (ancestral refuses it above)
        sig = _karras(sig, steps)
        ts = np.array([_sigma_to_t(x, np.log(all_sigmas)) for x in sig])
    sigmas = np.concatenate([sig, [0.0]]).astype(np.float32)
    s_max = float(sigmas.max())
    init = s_max if s.timestep_spacing in ("linspace", "trailing") else (s_max**2 + 1) ** 0.5
    c_in = 1.0 / np.sqrt(sigmas[:-1].astype(np.float64) ** 2 + 1.0)
    return DiscretePlan(s, steps, ts.astype(np.float32).astype(np.float64), c_in, init,
                        sigmas=sigmas)


def _dpm_spacing(s: DiscreteSchedule, steps: int) -> np.ndarray:
    n = s.num_train_timesteps
    if s.timestep_spacing == "leading":
        ratio = n // (steps + 1)
        ts = (np.arange(0, steps + 1) * ratio).round()[::-1][:-1].copy().astype(np.int64)
        return ts + s.steps_offset
    return np.arange(n, 0, -n / steps).round().copy().astype(np.int64) - 1


# ------------------------------------------------------------------------------------ the steps
def _x0_from_alpha_bar(s: DiscreteSchedule, x: np.ndarray, out: np.ndarray,
                       a: float) -> tuple[np.ndarray, np.ndarray]:
    """(x0, eps) from the model output at alpha_bar a (DDIM's parametrisation)."""
    b = 1 - a
    if s.prediction_type == "epsilon":
        return (x - b**0.5 * out) / a**0.5, out
    return a**0.5 * x - b**0.5 * out, a**0.5 * out + b**0.5 * x


def ddim_step(plan: DiscretePlan, i: int, x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Deterministic DDIM (eta = 0) from step i to the next."""
    s = plan.schedule
    a, a_prev = float(plan.alpha_prod[i]), float(plan.alpha_prod_prev[i])
    x0, eps = _x0_from_alpha_bar(s, x, out, a)
    if s.clip_sample:
        x0 = np.clip(x0, -s.clip_sample_range, s.clip_sample_range)
    return a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps


def _alpha_sigma(sigma: float) -> tuple[float, float]:
    alpha = 1.0 / (sigma**2 + 1) ** 0.5
    return alpha, sigma * alpha


def dpm_step(plan: DiscretePlan, i: int, x: np.ndarray, out: np.ndarray,
             prev_x0: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """DPM-Solver++ 2M (midpoint): first order at the first step and the last (sigma -> 0).
    Returns (next latents, this step's x0 prediction for the next step)."""
    s, sig = plan.schedule, plan.sigmas.astype(np.float64)
    a_s, s_s = _alpha_sigma(sig[i])
    x0 = (x - s_s * out) / a_s if s.prediction_type == "epsilon" else a_s * x - s_s * out
    a_t, s_t = _alpha_sigma(sig[i + 1])
    with np.errstate(divide="ignore"):  # sigma_t = 0 at the end: lambda_t = inf, exp(-h) = 0
        h = (np.log(a_t) - np.log(s_t)) - (np.log(a_s) - np.log(s_s))
    d = x0
    if prev_x0 is not None and i < plan.steps - 1:
        a_p, s_p = _alpha_sigma(sig[i - 1])
        r0 = ((np.log(a_s) - np.log(s_s)) - (np.log(a_p) - np.log(s_p))) / h
        d = x0 + 0.5 * (1.0 / r0) * (x0 - prev_x0)
    return (s_t / s_s) * x - (a_t * np.expm1(-h)) * d, x0


def euler_step(plan: DiscretePlan, i: int, x: np.ndarray, out: np.ndarray,
               noise: np.ndarray | None = None) -> np.ndarray:
    """Euler on the sigma ODE; with `noise` (ancestral) the step goes down to sigma_down and adds
    sigma_up * noise."""
    s, sigma, sigma_to = plan.schedule, float(plan.sigmas[i]), float(plan.sigmas[i + 1])
    if s.prediction_type == "epsilon":
        x0 = x - sigma * out
    else:
        x0 = out * (-sigma / (sigma**2 + 1) ** 0.5) + x / (sigma**2 + 1)
    deriv = (x - x0) / sigma
    if noise is None:
        return x + deriv * (sigma_to - sigma)
    up = (sigma_to**2 * (sigma**2 - sigma_to**2) / sigma**2) ** 0.5
    down = (sigma_to**2 - up**2) ** 0.5
    return x + deriv * (down - sigma) + noise * up


Model = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (scaled latents, timesteps) -> output


def run_plan(plan: DiscretePlan, model: Model, x: np.ndarray,
             noise: Callable[[int], np.ndarray] | None = None,
             on_step: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """The loop from initial latents `x` (already scaled by init_noise_sigma): per step, scale,
    call the model at timesteps[i], step. `noise(i)` draws the ancestral noise of step i."""
    kind, n = plan.schedule.kind, x.shape[0]
    x = np.asarray(x, dtype=np.float64)
    prev_x0 = None
    for i in range(plan.steps):
        t = np.full(n, plan.timesteps[i], dtype=np.float32)
        out = np.asarray(model((x * plan.c_in[i]).astype(np.float32), t), dtype=np.float64)
        if kind == "ddim":
            x = ddim_step(plan, i, x, out)
        elif kind == "dpm++2m":
            x, prev_x0 = dpm_step(plan, i, x, out, prev_x0)
        else:
            draw = None
            if kind == "euler-ancestral":
                if noise is None:
                    raise ValueError("euler-ancestral needs a noise source")
                draw = np.asarray(noise(i), dtype=np.float64)
            x = euler_step(plan, i, x, out, draw)
        if on_step is not None:
            on_step(i, x)
    return x.astype(np.float32)


def sample_discrete(
    denoise: Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray],
    shape: tuple[int, ...], plan: DiscretePlan, seed: int, guidance_scale: float = 1.0,
    cond: np.ndarray | None = None, null_cond: np.ndarray | None = None,
) -> np.ndarray:
    """Latents from noise: `numpy.random.default_rng(seed).standard_normal(shape) *
    init_noise_sigma`, then the loop; classifier-free guidance is one call on [cond; null]; the
    ancestral noise comes from the same generator, one draw of `shape` per step."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * plan.init_noise_sigma
    eps_fn = _guided(denoise, guidance_scale, cond, null_cond)
    return run_plan(plan, eps_fn, x, noise=lambda i: rng.standard_normal(shape))


def sampler_entry(plan: DiscretePlan, guidance_scale: float, seed: int) -> dict[str, Any]:
    """The manifest's scheduler section: how to re-run this loop from numbers alone."""
    s = plan.schedule
    return {"kind": s.kind, "schedule": "discrete", "diffusers_class": DIFFUSERS_CLASS[s.kind],
            "steps": plan.steps, "prediction": s.prediction_type,
            "guidance_scale": guidance_scale, "seed": seed,
            "noise": "numpy.random.default_rng(seed).standard_normal(shape) * init_noise_sigma"
                     + ("; then one standard_normal(shape) per step, from the same generator"
                        if s.kind == "euler-ancestral" else ""),
            "config": s.to_dict(), "constants": plan.constants()}


def plan_from_entry(entry: dict[str, Any], steps: int | None = None) -> DiscretePlan:
    """The plan a manifest's scheduler section describes (another step count recomputes it)."""
    return make_plan(DiscreteSchedule(**entry["config"]), steps or entry["steps"])
