"""ExecuTorch XNNPACK precisions (targets/executorch.py's passes): fp16 as the capture in half
precision, int8 through the XNNPACK PT2E quantizer (torchao's prepare_pt2e / convert_pt2e).

Static int8 quantizes exactly the layers the static rule chooses (tflite.static_plan, the rule
every static path shares: the time/conditioning path, the stem and head outside the residual
trunk, and `keep_float` stay float) and calibrates their activation observers (min/max) on the
model's own trajectory feeds. Dynamic int8: per-channel int8 weights on every linear and conv,
activations quantized per call.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mobilegen.errors import ExportError, first_line
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.signature import ModelIO
from mobilegen.targets import executorch_lower as lowering

FP16_EXACT_MAX = 2048  # integers up to 2**11 are exact in float16


def _graph_in_half(module: Any) -> Any:
    """The captured graph module with fp16 weights and every float32 it names (dtype arguments
    of casts and factories) in float16; its dtype assertions dropped (they name float32); exact
    GELU in its tanh form (below)."""
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
    _gelu_tanh(graph)
    module.recompile()
    return module.half()


def _gelu_tanh(graph: Any) -> None:
    """aten.gelu as 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): XNNPACK takes no fp16 GELU
    (its partitioner refuses it) but takes tanh; the tanh form is within 1e-3 of the exact one,
    fp16's own resolution at 1 (on the default STOIC the fp16 .pte had run 14 delegate calls
    around 5 GELUs left on the portable kernels)."""
    import torch

    aten = torch.ops.aten
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.gelu.default:
            continue
        x = node.args[0]
        with graph.inserting_before(node):
            cube = graph.call_function(aten.mul.Tensor, (graph.call_function(
                aten.mul.Tensor, (x, x)), x))
            inner = graph.call_function(aten.mul.Tensor, (graph.call_function(
                aten.add.Tensor, (x, graph.call_function(aten.mul.Tensor, (cube, 0.044715)))),
                math.sqrt(2.0 / math.pi)))
            one_plus = graph.call_function(aten.add.Tensor, (graph.call_function(
                aten.tanh.default, (inner,)), 1.0))
            out = graph.call_function(aten.mul.Tensor, (graph.call_function(
                aten.mul.Tensor, (x, 0.5)), one_plus))
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def half(program: Any, example: tuple[Any, ...],
         io: ModelIO) -> tuple[Any, tuple[int, ...], tuple[Any, ...], dict[str, Any]]:
    """(the capture in fp16, weights, compute and float inputs / output, XNNPACK's fp16 path;
    its float-coded inputs; its example in the dtypes it takes; the row's details). A
    float-coded integer input goes in as fp16 when every value it can take is exact in fp16
    (the io spec's range: a class label), else as fp32 with its cast left in the graph."""
    import copy

    import torch

    # a copy: Module.half() converts parameters in place, and the capture's parameters are the
    # model's own (every other target still lowers from them)
    module = _graph_in_half(copy.deepcopy(program.module()))
    coded, dtypes = [], []
    for i, (spec, value) in enumerate(zip(io.inputs, example, strict=True)):
        if value.is_floating_point():
            dtypes.append(torch.float16)
            continue
        small = spec.value_range is not None and max(map(abs, spec.value_range)) <= FP16_EXACT_MAX
        if lowering.float_code_inputs(module, example, torch.float16 if small else torch.float32,
                                      only=i):
            coded.append(i)
            dtypes.append(torch.float16 if small else torch.float32)
        else:
            dtypes.append(value.dtype)
    half_example = tuple(v.to(d) for v, d in zip(example, dtypes, strict=True))
    details = {"method_detail": "fp16 weights, compute, inputs and output on XNNPACK (the "
                                "runner casts from and to fp32); GELU in its tanh form"}
    return module, tuple(coded), half_example, details


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
