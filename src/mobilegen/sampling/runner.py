"""What every artifact and the PyTorch model look like to the code that drives them: a Runner
maps named input arrays to the output array. Sampling, parity and latency all take Runners."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mobilegen.signature import ModelIO

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


def torch_runner(model: Any, io: ModelIO) -> Runner:
    """The PyTorch model as a Runner (inference mode, inputs in the model's argument order)."""
    import torch

    names = io.input_names

    def run(feeds: dict[str, np.ndarray]) -> np.ndarray:
        with torch.inference_mode():
            args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names if n in feeds]
            return model(*args).numpy()

    return run
