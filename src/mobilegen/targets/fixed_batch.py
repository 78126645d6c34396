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
