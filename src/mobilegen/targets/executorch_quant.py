"""ExecuTorch XNNPACK precisions (targets/executorch.py's passes): fp16 as the capture in half
precision, int8 through the XNNPACK PT2E quantizer (torchao's prepare_pt2e / convert_pt2e).

Static int8 quantizes exactly the layers the static rule chooses (tflite.static_plan, the rule
every static path shares: the time/conditioning path, the stem and head outside the residual
trunk, and `keep_float` stay float) and calibrates their activation observers (min/max) on the
model's own trajectory feeds. Dynamic int8: per-channel int8 weights on every linear and conv,
activations quantized per call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilegen.errors import ExportError, first_line
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.signature import ModelIO
from mobilegen.targets import executorch_lower as lowering


def _graph_in_half(module: Any) -> Any:
    """The captured graph module with fp16 weights and every float32 it names (dtype arguments
    of casts and factories) in float16; its dtype assertions dropped (they name float32)."""
    import torch

    graph = module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and "_assert_tensor_metadata" in str(node.target):
            graph.erase_node(node)
            continue
        if node.kwargs.get("dtype") is torch.float32:
            node.kwargs = {**node.kwargs, "dtype": torch.float16}
        node.args = tuple(torch.float16 if a is torch.float32 else a for a in node.args)
        if node.op == "get_attr":  # lifted constants are neither parameters nor buffers
            value = getattr(module, str(node.target), None)
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                setattr(module, str(node.target), value.half())
    module.recompile()
    return module.half()


class _Half:
    """The captured module in fp16 with fp32 inputs and output (int inputs pass through, and so
    do the float-coded ones: the graph casts them itself)."""

    def __new__(cls, module: Any, example: tuple[Any, ...]) -> Any:
        import torch

        inner = _graph_in_half(module)
        coded = lowering.float_code_inputs(inner, example)

        class HalfIO(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = inner
                self.coded = coded

            def forward(self, *args: Any) -> Any:
                cast = [a.half() if a.is_floating_point() and i not in coded else a
                        for i, a in enumerate(args)]
                return self.inner(*cast).float()

        return HalfIO()


def half(program: Any, example: tuple[Any, ...]) -> tuple[Any, tuple[int, ...], dict[str, Any]]:
    """(the capture in fp16, weights and compute, fp32 at the I/O edges: XNNPACK's fp16 path;
    its float-coded inputs; the row's details)."""
    import copy

    # a copy: Module.half() converts parameters in place, and the capture's parameters are the
    # model's own (every other target still lowers from them)
    module = _Half(copy.deepcopy(program.module()), example)
    details = {"method_detail": "fp16 weights and compute on XNNPACK; inputs and output cast "
                                "from and to fp32 at the graph's edges"}
    return module, module.coded, details


def int8(program: Any, example: tuple[Any, ...], spec: PrecisionSpec,
         calibration: list[dict[str, np.ndarray]], io: ModelIO,
         stem: str) -> tuple[Any, dict[str, Any]]:
    """The capture quantized by the XNNPACK quantizer (a graph module with quantize /
    dequantize nodes), for executorch.py to capture at fixed shapes."""
    return quantized_module(program, example, spec, calibration, io, stem)


def quantized_module(program: Any, example: tuple[Any, ...], spec: PrecisionSpec,
                     calibration: list[dict[str, np.ndarray]], io: ModelIO,
                     stem: str) -> tuple[Any, dict[str, Any]]:
    """(the converted PT2E module, with quantize/dequantize nodes around its int8 layers, the
    row's details)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if spec.mode == "static" and not calibration:
        raise ExportError(f"int8 static for {stem}: no calibration feeds were collected")
    quantizer = XNNPACKQuantizer()
    details: dict[str, Any] = {}
    if spec.mode == "static":
        from mobilegen.targets.tflite import static_plan

        plan = static_plan(program, spec)
        config = get_symmetric_quantization_config(is_per_channel=True)
        for path in plan["quantized"]:
            quantizer.set_module_name(path, config)
        details = {"kept_float": plan["kept"], "quantized_layers": plan["quantized"],
                   "method_detail": "XNNPACK PT2E quantizer: static W8A8 (per-channel "
                   "symmetric int8 weights, activation min/max over all "
                   f"{len(calibration)} trajectory calibration feeds) on the quantized_layers "
                   "only"}
    else:
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                               is_dynamic=True))
        details = {"method_detail": "XNNPACK PT2E quantizer: dynamic (per-channel int8 "
                                    "weights, activations quantized per call)"}
    try:
        prepared = prepare_pt2e(program.module(), quantizer)
        with torch.no_grad():
            for feed in calibration or [io.feeds(example)]:
                prepared(*[torch.from_numpy(np.ascontiguousarray(feed[n]))
                           for n in io.input_names])
        converted = convert_pt2e(prepared)
    except Exception as e:  # torchao raises many types
        raise ExportError(f"{spec.tag} quantization failed for {stem}: "
                          f"{type(e).__name__}: {first_line(e)}") from e
    return converted, details
