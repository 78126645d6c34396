"""Inputs drawn from the model's own sampling trajectories, for static-int8 calibration and for
distillation (pass recovery).

Activation ranges move with the timestep (early steps see almost pure noise, late steps almost
clean images), so calibration feeds are stratified over the whole trajectory rather than taken at
one timestep, and distillation batches draw t uniformly over (eps, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mobilegen.sampling.generate import conditions, generate
from mobilegen.sampling.runner import Runner
from mobilegen.sampling.samplers import VPSchedule


def trajectory_feeds(runner: Runner, component: dict[str, Any], seed: int | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     ) -> list[dict[str, np.ndarray]]:
    """Every denoiser call of one sampling run (the manifest's sampler), in call order;
    `progress(step, steps)` per sampling step."""
    records: list[dict[str, np.ndarray]] = []

    def recording(feeds: dict[str, np.ndarray]) -> np.ndarray:
        records.append({k: np.array(v, copy=True) for k, v in feeds.items()})
        return runner(feeds)

    generate(recording, component, seed=seed, progress=progress)
    return records


def stratified(records: list[dict[str, np.ndarray]], time_input: str,
               count: int) -> list[dict[str, np.ndarray]]:
    """`count` records whose model times are spread evenly from the largest to the smallest."""
    times = np.array([float(r[time_input].ravel()[0]) for r in records])
    targets = np.linspace(times.max(), times.min(), min(count, len(records)))
    picked = sorted({int(np.abs(times - want).argmin()) for want in targets})
    return [records[i] for i in picked]


def calibration_feeds(runner: Runner, component: dict[str, Any], count: int = 8,
                      seed: int = 1, progress: Callable[[int, int], None] | None = None,
                      ) -> list[dict[str, np.ndarray]]:
    """Feeds for static quantization: a sampling run at `seed` (not the report's seed, so the
    end-to-end check is not run on the calibration trajectory), stratified over its timesteps."""
    time_input = component["inputs"][1]["name"]
    return stratified(trajectory_feeds(runner, component, seed, progress), time_input, count)


def feed_times(feeds: list[dict[str, np.ndarray]], component: dict[str, Any]) -> list[float]:
    name = component["inputs"][1]["name"]
    return [float(f[name].ravel()[0]) for f in feeds]


def noised_batches(x0: np.ndarray, component: dict[str, Any], batch: int,
                   null_prob: float = 0.1) -> Callable[[int, Any], tuple[Any, ...]]:
    """Distillation inputs x_t = alpha_t x0 + sigma_t eps with x0 from the teacher's own samples,
    t uniform over (eps, 1], each sample's conditioning (null with probability `null_prob`, so the
    unconditional branch of classifier-free guidance is trained too)."""
    import torch

    schedule = VPSchedule(**component["sampler"]["schedule"])
    cond, null = conditions(component["conditioning"], len(x0))
    x0_t = torch.from_numpy(np.asarray(x0, dtype=np.float32))
    cond_t = None if cond is None else torch.from_numpy(cond)
    null_t = None if null is None else torch.from_numpy(null)

    def batches(step: int, gen: Any) -> tuple[Any, ...]:
        idx = torch.randint(0, len(x0_t), (batch,), generator=gen)
        u = torch.rand(batch, generator=gen, dtype=torch.float64)
        t = (schedule.eps + (1.0 - schedule.eps) * u).numpy()
        a = torch.from_numpy(schedule.alpha(t).astype(np.float32))
        s = torch.from_numpy(schedule.sigma(t).astype(np.float32))
        shape = (batch,) + (1,) * (x0_t.dim() - 1)
        noise = torch.randn(x0_t[idx].shape, generator=gen)
        x = a.view(shape) * x0_t[idx] + s.view(shape) * noise
        tm = torch.from_numpy(schedule.model_time(t))
        if cond_t is None or null_t is None:
            return x, tm
        drop = torch.rand(batch, generator=gen) < null_prob
        c, n = cond_t[idx], null_t[idx]
        mask = drop.view((batch,) + (1,) * (c.dim() - 1))
        return x, tm, torch.where(mask, n, c)

    return batches
