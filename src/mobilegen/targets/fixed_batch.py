"""Running a file that takes one batch size (a fixed-shape export) at any batch size."""

from __future__ import annotations

import numpy as np

from mobilegen.sampling.runner import Runner


def fixed_batch_runner(run: Runner, batch: int) -> Runner:
    """Split feeds into calls of exactly `batch` (the last one padded by repeating its final
    sample, which never changes a real output: samples are independent in every family)."""

    def batched(feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        outs = []
        for start in range(0, n, batch):
            call = {}
            for name, value in feeds.items():
                part = value[start:start + batch]
                if len(part) < batch:
                    part = np.concatenate([part, np.repeat(part[-1:], batch - len(part), 0)])
                call[name] = part
            outs.append(run(call)[: min(batch, n - start)])
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    return batched


def multi_batch_runner(runs: dict[int, Runner]) -> Runner:
    """Feeds of any batch through files (or methods) that each take one batch size: calls of
    the largest size that fits the samples left, so a one-method file behaves as
    fixed_batch_runner and a file with a batch-1 method never pads."""
    if len(runs) == 1:
        ((batch, run),) = runs.items()
        return fixed_batch_runner(run, batch)
    sizes = sorted(runs, reverse=True)

    def batched(feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        outs, start = [], 0
        while start < n:
            size = next((b for b in sizes if b <= n - start), sizes[-1])
            part = {k: v[start:start + size] for k, v in feeds.items()}
            outs.append(fixed_batch_runner(runs[size], size)(part))
            start += size
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=0)

    return batched
