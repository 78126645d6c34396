"""What a .pte method is called with: the caller's arrays as tensors in the dtypes the method
takes (shared by the runner in targets/executorch.py and the ETDump profile)."""

from __future__ import annotations

from typing import Any

import numpy as np

# TensorInfo.dtype() is c10's ScalarType code: 6 Float, 5 Half (4 Long, 3 Int)
SCALAR_DTYPES = {6: "float32", 5: "float16"}


def method_args(method: Any, values: list[Any]) -> list[Any]:
    """Tensors for `method.execute`, each cast to the float dtype the method takes where it
    takes one (an fp16 .pte's inputs; float-coded labels and token ids,
    executorch_lower.float_code_inputs)."""
    import torch

    meta = method.metadata
    args = []
    for i, v in enumerate(values):
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        want = SCALAR_DTYPES.get(meta.input_tensor_meta(i).dtype())
        if want is not None and t.dtype != getattr(torch, want):
            t = t.to(getattr(torch, want))
        args.append(t)
    return args
