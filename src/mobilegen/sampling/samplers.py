"""Samplers on the continuous VP schedule, in numpy only.

An app ships these loops next to the artifact, so nothing here imports torch: export runs the same
code once with PyTorch behind `denoise` and once with the runtime, and `mobilegen sample` runs it
from the manifest alone.

Conventions: time t runs from 1 (pure noise) to `eps`; the model sees t * time_scale; the model
predicts epsilon; images are in [-1, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

SamplerKind = Literal["dpm++2m", "ddim", "euler-maruyama"]
SAMPLER_KINDS: tuple[str, ...] = ("dpm++2m", "ddim", "euler-maruyama")
Denoise = Callable[[np.ndarray, np.ndarray, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class VPSchedule:
    """The variance-preserving SDE with a linear beta(t) (Song et al.): alpha^2 + sigma^2 = 1."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    eps: float = 1e-3
    time_scale: float = 1000.0

    def log_alpha(self, t: np.ndarray | float) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: np.ndarray | float) -> np.ndarray:
        return np.exp(self.log_alpha(t))

    def sigma(self, t: np.ndarray | float) -> np.ndarray:
        return np.sqrt(-np.expm1(2.0 * self.log_alpha(t)))

    def lambda_(self, t: np.ndarray | float) -> np.ndarray:
        """Half log-SNR, log(alpha / sigma): the variable DPM-Solver steps in."""
        return self.log_alpha(t) - np.log(self.sigma(t))

    def t_of_lambda(self, lam: np.ndarray | float) -> np.ndarray:
        """Inverse of lambda_: alpha^2 = sigmoid(2 lambda), then the quadratic in t."""
        log_alpha = -0.5 * np.logaddexp(0.0, -2.0 * np.asarray(lam, dtype=np.float64))
        d = self.beta_max - self.beta_min
        return (-0.5 * self.beta_min + np.sqrt(0.25 * self.beta_min**2 - d * log_alpha)) / (0.5 * d)

    def beta(self, t: np.ndarray | float) -> np.ndarray:
        return self.beta_min + np.asarray(t, dtype=np.float64) * (self.beta_max - self.beta_min)

    def model_time(self, t: np.ndarray | float) -> np.ndarray:
        return (np.asarray(t, dtype=np.float64) * self.time_scale).astype(np.float32)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class SamplerConfig:
    kind: SamplerKind = "dpm++2m"
    steps: int = 20
    guidance_scale: float = 1.0
    # log-SNR spacing: DPM-Solver's advice for pixel-space VP models (uniform t wastes steps at t~1)
    time_spacing: Literal["uniform", "logsnr"] = "logsnr"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SAMPLER_KINDS:
            raise ValueError(f"sampler kind: expected one of {SAMPLER_KINDS}, found {self.kind!r}")
        if self.steps < 1:
            raise ValueError(f"sampler steps: expected >= 1, found {self.steps}")
        if self.time_spacing not in ("uniform", "logsnr"):
            raise ValueError(f"time_spacing: expected uniform|logsnr, found {self.time_spacing!r}")


def timesteps(schedule: VPSchedule, config: SamplerConfig) -> np.ndarray:
    """steps + 1 times from 1 down to eps (float64)."""
    if config.time_spacing == "uniform":
        return np.linspace(1.0, schedule.eps, config.steps + 1)
    lam = np.linspace(schedule.lambda_(1.0), schedule.lambda_(schedule.eps), config.steps + 1)
    ts = schedule.t_of_lambda(lam)
    ts[0], ts[-1] = 1.0, schedule.eps  # exact ends despite round-off
    return ts


def _guided(denoise: Denoise, guidance: float, cond: np.ndarray | None,
            null_cond: np.ndarray | None) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """eps(x, t) with classifier-free guidance as one call on the batch [cond; null]."""
    if cond is None or guidance == 1.0:
        return lambda x, t: denoise(x, t, cond)
    if null_cond is None:
        raise ValueError("classifier-free guidance needs null_cond")
    both = np.concatenate([cond, null_cond])

    def eps(x: np.ndarray, t: np.ndarray) -> np.ndarray:
        out = denoise(np.concatenate([x, x]), np.concatenate([t, t]), both)
        e_c, e_u = np.split(np.asarray(out, dtype=np.float32), 2)
        return e_u + guidance * (e_c - e_u)

    return eps


def sample(
    denoise: Denoise,
    shape: tuple[int, ...],
    config: SamplerConfig,
    schedule: VPSchedule = VPSchedule(),
    cond: np.ndarray | None = None,
    null_cond: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Draw samples (float32, shape `shape`). Deterministic for a given config.seed."""
    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal(shape).astype(np.float64)
    eps_fn = _guided(denoise, config.guidance_scale, cond, null_cond)
    ts = timesteps(schedule, config)
    n = shape[0]

    def predict(x: np.ndarray, t: float) -> np.ndarray:
        tm = np.full(n, schedule.model_time(t), dtype=np.float32)
        return np.asarray(eps_fn(x.astype(np.float32), tm), dtype=np.float64)

    prev_x0, prev_h = None, None
    for i in range(config.steps):
        s, t = ts[i], ts[i + 1]
        a_s, sig_s = schedule.alpha(s), schedule.sigma(s)
        a_t, sig_t = schedule.alpha(t), schedule.sigma(t)
        e = predict(x, s)
        x0 = (x - sig_s * e) / a_s
        if config.kind == "ddim":
            x = a_t * x0 + sig_t * e
        elif config.kind == "dpm++2m":
            h = schedule.lambda_(t) - schedule.lambda_(s)
            d = x0
            if prev_x0 is not None:
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev_x0
            x = (sig_t / sig_s) * x - a_t * np.expm1(-h) * d
            prev_x0, prev_h = x0, h
        else:  # euler-maruyama on the reverse VP SDE; the last step is the noiseless mean
            dt = t - s  # negative
            beta = schedule.beta(s)
            x = x + (-0.5 * beta * x + beta * e / sig_s) * dt
            if i < config.steps - 1:
                x = x + np.sqrt(beta * -dt) * rng.standard_normal(shape)
        if progress is not None:
            progress(i + 1, config.steps)
    return x.astype(np.float32)


def sampler_constants(config: SamplerConfig, schedule: VPSchedule) -> dict[str, Any]:
    """Everything an app needs to re-implement the loop: the times and the schedule at them."""
    ts = timesteps(schedule, config)
    return {
        "kind": config.kind,
        "steps": config.steps,
        "prediction": "epsilon",
        "guidance_scale": config.guidance_scale,
        "time_spacing": config.time_spacing,
        "seed": config.seed,
        "noise": "numpy.random.default_rng(seed).standard_normal(shape)",
        "t": [float(v) for v in ts],
        "model_t": [float(v) for v in schedule.model_time(ts)],
        "alpha": [float(v) for v in schedule.alpha(ts)],
        "sigma": [float(v) for v in schedule.sigma(ts)],
        "schedule": schedule.to_dict(),
    }


def images_to_uint8(x: np.ndarray) -> np.ndarray:
    """NCHW in [-1, 1] -> NHWC uint8."""
    u8 = np.clip(np.rint((np.asarray(x, dtype=np.float64) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return u8.transpose(0, 2, 3, 1)


def make_grid(images: np.ndarray, nrow: int, pad: int = 2) -> np.ndarray:
    """(B, H, W, C) uint8 -> one (H', W', C) image: `nrow` a row, `pad` black pixels apart."""
    b, h, w, c = images.shape
    rows = -(-b // nrow)
    grid = np.zeros((pad + rows * (h + pad), pad + nrow * (w + pad), c), dtype=np.uint8)
    for k in range(b):
        r, q = divmod(k, nrow)
        y, xx = pad + r * (h + pad), pad + q * (w + pad)
        grid[y:y + h, xx:xx + w] = images[k]
    return grid
