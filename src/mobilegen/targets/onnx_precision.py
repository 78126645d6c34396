"""ONNX precision conversions for targets/onnx.py: fp16 (fp32 I/O, fragile ops and overflowing
layers kept fp32), int8 weight-only (MatMulNBits), dynamic, and static (QDQ, W8A8 or W8A16) that
quantizes weight-bearing ops only and says what it kept float and why.

Layers are named by their PyTorch module path ("blocks.3.mlp.fc2"), read from the metadata the
dynamo exporter writes on every node (`pkg.torch.onnx.name_scopes`), so a plan made on the
PyTorch model (fp16 safety) or by the sensitivity analysis names the same layers as the artifact.
"""

from __future__ import annotations

import ast
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.passes.precision import EDGE_REASON, PrecisionSpec, matches

# Ops kept in fp32 by the fp16 conversion: normalizations and reductions (variance in fp16
# overflows/underflows), softmax (exp of large logits), and everything onnxruntime's own default
# block list names. The timestep path (graph input -> Sin/Cos) is also kept in fp32 node by node:
# t * freq reaches ~1000 there, where fp16's spacing (0.5) scrambles the sinusoids.
FP16_KEEP_FP32_OPS = (
    "LayerNormalization", "GroupNormalization", "InstanceNormalization", "Softmax",
    "ReduceMean", "ReduceSum", "ReduceMax", "Pow", "Sqrt", "Reciprocal", "Exp", "Erf",
    "Sin", "Cos", "Range",
)
# Ops whose weights int8 quantizes. Conv is left out of dynamic mode: ConvInteger made conv-heavy
# models 2-4x slower on CPU (STACK-NOTES); static QDQ handles Conv fine.
INT8_WEIGHT_OPS = ("MatMul", "Gemm", "Conv")
INT8_DYNAMIC_OPS = ("MatMul", "Gemm")
# onnxruntime calibrators by our option name; percentile keeps the 99.999th |value|.
CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}
PERCENTILE = 99.999
# Weight-only MatMul: MatMulNBits, 8-bit symmetric blocks of this many K values.
NBITS_BLOCK = 32


@dataclass(frozen=True)
class Layer:
    """One weight-bearing node: its ONNX name, op type and PyTorch module path."""

    node: str
    op: str
    path: str


def layer_path(node: Any) -> str:
    """The module path the exporter recorded for a node ('' for the root's own ops)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def _constants(model: Any) -> set[str]:
    names = {i.name for i in model.graph.initializer}
    return names | {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}


def image_dependent(model: Any) -> set[str]:
    """Names of the nodes downstream of the first graph input (the image / latent). Every other
    node depends only on t and the conditioning: the time/conditioning path."""
    reach = {model.graph.input[0].name}
    found: set[str] = set()
    for node in model.graph.node:  # ONNX graphs are topologically sorted
        if any(i in reach for i in node.input):
            found.add(node.name)
            reach.update(node.output)
    return found


def weight_layers(model: Any) -> tuple[list[Layer], list[dict[str, str]]]:
    """The quantizable layers (Conv, Gemm, MatMul with a constant B, on the image path) and the
    weight-op nodes left float by construction, each with its reason."""
    consts, on_path = _constants(model), image_dependent(model)
    layers, kept = [], []
    for node in model.graph.node:
        if node.op_type not in INT8_WEIGHT_OPS:
            continue
        path = layer_path(node) or node.name
        if node.name not in on_path:
            kept.append({"layer": path, "op": node.op_type,
                         "reason": "time/conditioning path (depends only on t and the label or "
                                   "context; outlier ranges, computed once per call)"})
        elif len(node.input) < 2 or node.input[1] not in consts:
            kept.append({"layer": path, "op": node.op_type,
                         "reason": "activation x activation MatMul (attention QK^T or attn x V)"})
        else:
            layers.append(Layer(node.name, node.op_type, path))
    return layers, kept


def _merge_adds(model: Any) -> list[Any]:
    """The Adds whose two inputs both depend on the image (residual connections `x + f(x)` and
    `shortcut(x) + f(x)`), in graph order."""
    on_path = image_dependent(model)
    image_values = {model.graph.input[0].name} | {
        o for n in model.graph.node if n.name in on_path for o in n.output}
    return [n for n in model.graph.node if n.op_type == "Add" and len(n.input) == 2
            and all(i in image_values for i in n.input)]


def _ancestors(producer: dict[str, Any], value: str) -> set[str]:
    """Names of the nodes `value` is computed from (its producer included)."""
    found: set[str] = set()
    stack = [value]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and node.name not in found:
            found.add(node.name)
            stack.extend(node.input)
    return found


def stem_and_head(model: Any) -> set[str]:
    """Names of the nodes outside the residual trunk: the stem (what both inputs of the first
    residual Add are computed from: its output is the trunk) and the head (everything after the
    last residual Add). Empty when the graph has no residual Add."""
    adds = _merge_adds(model)
    if not adds:
        return set()
    producer = {out: n for n in model.graph.node for out in n.output}
    first, last = adds[0], adds[-1]
    outside = _ancestors(producer, first.input[0]) & _ancestors(producer, first.input[1])
    reach = set(last.output)
    after = False
    for node in model.graph.node:  # topologically sorted: the head follows `last`
        after = after or node.name == last.name
        if after and any(i in reach for i in node.input):
            outside.add(node.name)
            reach.update(node.output)
    return outside


def static_selection(model: Any, spec: PrecisionSpec) -> tuple[list[Layer], list[dict[str, str]]]:
    """What static int8 quantizes, and every weight op it keeps float with the reason: the
    time/conditioning path, activation x activation MatMuls, the stem and head outside the
    residual trunk (or the first and last weight layers of a model without residual Adds), and
    `spec.keep_float`."""
    layers, kept = weight_layers(model)
    outside = stem_and_head(model)
    edges = ({x.path for x in layers if x.node in outside} if outside
             else {layers[0].path, layers[-1].path} if layers else set())
    chosen = []
    for layer in layers:
        if layer.path in edges:
            kept.append({"layer": layer.path, "op": layer.op, "reason": EDGE_REASON})
        elif matches(layer.path, spec.keep_float):
            kept.append({"layer": layer.path, "op": layer.op,
                         "reason": "kept float by the recipe or the sensitivity plan"})
        else:
            chosen.append(layer)
    return chosen, kept


class FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def quantize_static_nodes(src: Path, dst: Path, spec: PrecisionSpec, nodes: list[str],
                          calibration: list[dict[str, np.ndarray]], external: bool,
                          cache: Path | None = None) -> None:
    """QDQ on exactly `nodes`: symmetric per-channel s8 weights, u8 (asymmetric) or u16
    activations calibrated by `spec.calibration_method`; other ops untouched (float). `cache`
    (a JSON path) keeps the calibrated ranges so repeated quantizations calibrate once."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    a16 = spec.activation_bits == 16
    # MatMul/Gemm outputs stay float: the bias/residual Add after them reads float, and
    # onnxruntime fuses DQ -> MatMul into MatMulIntegerToFloat (int8 GEMM, float out). A Conv
    # needs its output quantized too for onnxruntime to run QLinearConv: with a float output it
    # dequantizes the weights and convolves in fp32 on every call (slower than fp32). At A16 the
    # CPU has no 16-bit kernels either way, so Conv outputs stay float there.
    float_out = list(INT8_WEIGHT_OPS) if a16 else [o for o in INT8_WEIGHT_OPS if o != "Conv"]
    extra: dict[str, Any] = {"MatMulConstBOnly": True, "WeightSymmetric": True,
                             "UseQDQContribOps": a16,
                             "OpTypesToExcludeOutputQuantization": float_out}
    if spec.calibration_method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    root = logging.getLogger()
    level, root.level = root.level, max(root.level, logging.ERROR)  # "consider pre-processing"
    try:
        quantize_static(
            str(src), str(dst), FeedReader(calibration), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(INT8_WEIGHT_OPS), nodes_to_quantize=nodes or ["-none-"],
            per_channel=True, reduce_range=False,
            activation_type=QuantType.QUInt16 if a16 else QuantType.QUInt8,
            weight_type=QuantType.QInt8, use_external_data_format=external,
            calibrate_method=getattr(CalibrationMethod, CALIBRATION[spec.calibration_method]),
            extra_options=extra, calibration_cache_path=cache)
    finally:
        root.setLevel(level)


def convert(src: Path, dst: Path, spec: PrecisionSpec, calibration: list[dict[str, np.ndarray]],
            external: bool) -> dict[str, Any]:
    """Write `dst` in `spec`'s precision from the fp32 `src`; returns the artifact's details."""
    if spec.kind == "fp16":
        return _fp16(src, dst, spec, external)
    if spec.mode == "weight_only":
        return _weight_only(src, dst, external)
    if spec.mode == "dynamic":
        return _dynamic(src, dst, spec, external)
    return _static(src, dst, spec, calibration, external)


def _dynamic(src: Path, dst: Path, spec: PrecisionSpec, external: bool) -> dict[str, Any]:
    """Dynamic int8 on the static path's selection (time/conditioning path, stem and head and
    `keep_float` stay float): per-call activation ranges do not save the head, the digits
    STOIC's most sensitive layer (all MatMul/Gemm quantized: 37.8 dB image PSNR, measured)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    chosen, kept = static_selection(onnx.load(str(src), load_external_data=False), spec)
    chosen = [c for c in chosen if c.op in INT8_DYNAMIC_OPS]
    # reduce_range: 7-bit weights. onnxruntime's u8 x s8 integer matmul saturates its int16
    # pair sums on x86 CPUs without VNNI (AVX2 only); on such a host the tiny test STOIC's
    # worst step fell from ~50 dB to 31.0 dB with 8-bit weights, and is 58.5 dB with 7-bit
    # (measured, AMD EPYC, AVX2). The artifact must be right on every CPU that runs it.
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(INT8_DYNAMIC_OPS),
                     nodes_to_quantize=[c.node for c in chosen] or ["-none-"],
                     per_channel=True, weight_type=QuantType.QInt8, reduce_range=True,
                     use_external_data_format=external)
    return {"method": "onnxruntime quantize_dynamic (MatMul/Gemm, per-channel int8 weights in "
                      "7-bit range, u8 activations quantized per call; Conv float)",
            "quantized_layers": [c.path for c in chosen],
            "kept_float": [k for k in kept if k["op"] in INT8_DYNAMIC_OPS]}


def _static(src: Path, dst: Path, spec: PrecisionSpec, calibration: list[dict[str, np.ndarray]],
            external: bool) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    chosen, kept = static_selection(model, spec)
    quantize_static_nodes(src, dst, spec, [c.node for c in chosen], calibration, external)
    acts = "u16 (W8A16)" if spec.activation_bits == 16 else "u8 asymmetric (W8A8)"
    details: dict[str, Any] = {
        "method": (f"onnxruntime quantize_static QDQ: symmetric per-channel s8 weights, {acts} "
                   f"activations, {CALIBRATION[spec.calibration_method]} calibration on "
                   f"{len(calibration)} trajectory feeds stratified over t"),
        "quantized_layers": [c.path for c in chosen],
        "kept_float": kept,
        "kept_float_ops": "residual Add, LayerNormalization, Softmax, GELU/SiLU, Sin/Cos and "
                          "every other op without a weight: not quantized (float between QDQ "
                          "pairs)",
        "calibration_feeds": len(calibration),
    }
    if not external:  # the optimized copy of a >2 GB model would need its own external data
        details["ort_cpu_kernels"] = ort_cpu_kernels(dst)
    return details


# onnxruntime's integer kernels (CPU EP), and the float weight ops that read a dequantized input
INT8_KERNELS = ("MatMulIntegerToFloat", "QLinearMatMul", "MatMulInteger", "QLinearConv",
                "ConvInteger", "QGemm", "DynamicQuantizeMatMul", "MatMulNBits")
FLOAT_WEIGHT_OPS = ("MatMul", "Gemm", "Conv", "FusedMatMul", "FusedConv", "FusedGemm")


def ort_cpu_kernels(path: Path) -> dict[str, Any]:
    """What onnxruntime's CPU EP makes of a quantized model after its graph optimizations: the
    integer kernels by op type, and the float weight ops still reading a DequantizeLinear output
    (a QDQ pattern it did not fuse, which computes in fp32)."""
    import tempfile

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="mobilegen-ortopt-") as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(opts.optimized_model_filepath, load_external_data=False)
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    kernels = {op: sum(n.op_type == op for n in model.graph.node) for op in INT8_KERNELS}
    return {"int8": {k: v for k, v in kernels.items() if v},
            "float_fallback": sorted(f"{n.op_type}:{n.name}" for n in model.graph.node
                                     if n.op_type in FLOAT_WEIGHT_OPS
                                     and any(i in dq for i in n.input)),
            "note": "onnxruntime CPU EP's optimized graph (this host's kernels)"}


def _weight_only(src: Path, dst: Path, external: bool) -> dict[str, Any]:
    """MatMul weights -> MatMulNBits (8-bit, symmetric blocks along K; onnxruntime's own
    weight-only kernel, int8 compute with accuracy_level 4); Conv/Gemm weights -> int8 +
    DequantizeLinear per output channel."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    quant = MatMulNBitsQuantizer(model, bits=8, block_size=NBITS_BLOCK, is_symmetric=True,
                                 accuracy_level=4, op_types_to_quantize=("MatMul",))
    quant.process()
    model = quant.model.model
    count = _dequantize_linear_weights(model, ("Conv", "Gemm"))
    onnx.save(model, str(dst), save_as_external_data=external)
    nbits = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    return {"method": f"int8 weights: MatMul -> com.microsoft MatMulNBits (8-bit, symmetric "
                      f"blocks of {NBITS_BLOCK} along K, accuracy_level 4: int8 compute); "
                      "Conv/Gemm -> per-channel int8 + DequantizeLinear, float compute",
            "matmulnbits_layers": nbits, "dequantize_linear_weights": count}


def _fp16(src: Path, dst: Path, spec: PrecisionSpec, external: bool) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    keep_nodes = timestep_path(model)
    by_layer = [n.name for n in model.graph.node if matches(layer_path(n), spec.keep_float)]
    ops = sorted({*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32_OPS})
    half = convert_float_to_float16(model, keep_io_types=True, op_block_list=ops,
                                    node_block_list=sorted({*keep_nodes, *by_layer}))
    _drop_fp16_round_trips(half, model)
    onnx.save(half, str(dst), save_as_external_data=external)
    return {"method": "onnxruntime.transformers.float16 (keep_io_types)",
            "fp32_ops": [o for o in FP16_KEEP_FP32_OPS if _has_op(model, o)],
            "fp32_timestep_nodes": len(keep_nodes),
            "fp32_layers": list(spec.keep_float), "fp32_layer_nodes": len(by_layer)}


def _drop_fp16_round_trips(half: Any, original: Any) -> int:
    """The float16 converter wraps every fp32-kept node in Casts, so a value passed between two
    kept nodes (or from the fp32 input t into one) still makes an fp32 -> fp16 -> fp32 round trip,
    and constants feeding kept nodes are stored as fp16. Both scramble the timestep sinusoids.
    Rewire such round trips to the fp32 value, and give kept nodes their original fp32 constants.
    Returns how many Casts were bypassed."""
    from onnx import TensorProto, numpy_helper

    def cast_to(n: Any) -> int | None:
        return next((a.i for a in n.attribute if a.name == "to"), None)

    to_half = {n.output[0]: n.input[0] for n in half.graph.node
               if n.op_type == "Cast" and cast_to(n) == TensorProto.FLOAT16}
    fp32_inits = {i.name: i for i in original.graph.initializer
                  if i.data_type == TensorProto.FLOAT}
    half_inits = {i.name for i in half.graph.initializer
                  if i.data_type == TensorProto.FLOAT16}
    rename: dict[str, str] = {}
    restored = []
    for n in half.graph.node:
        if n.op_type != "Cast" or cast_to(n) != TensorProto.FLOAT:
            continue
        src = n.input[0]
        if src in to_half:
            rename[n.output[0]] = to_half[src]
        elif src in half_inits and src in fp32_inits:
            keep = f"{src}_fp32"
            restored.append(numpy_helper.from_array(numpy_helper.to_array(fp32_inits[src]), keep))
            rename[n.output[0]] = keep
    for n in half.graph.node:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    half.graph.initializer.extend(restored)
    _drop_dead_casts(half)
    return len(rename)


def _drop_dead_casts(model: Any) -> None:
    """Drop Casts (and constants) nothing reads any more, until the graph stops shrinking."""
    def used() -> set[str]:
        return ({i for n in model.graph.node for i in n.input}
                | {o.name for o in model.graph.output})

    while True:
        live = used()
        dead = [n for n in model.graph.node if n.op_type == "Cast" and n.output[0] not in live]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    live = used()
    keep = [i for i in model.graph.initializer if i.name in live]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def _has_op(model: Any, op: str) -> bool:
    return any(n.op_type == op for n in model.graph.node)


def timestep_path(model: Any) -> list[str]:
    """Names of the nodes from the graph inputs up to every Sin/Cos (the sinusoidal timestep
    features), found by walking producers backwards."""
    producer = {out: n for n in model.graph.node for out in n.output}
    seen: dict[str, Any] = {}
    stack = [n for n in model.graph.node if n.op_type in ("Sin", "Cos")]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        stack.extend(producer[i] for i in node.input if i in producer)
    return sorted(seen)


def _dequantize_linear_weights(model: Any, ops: tuple[str, ...] = INT8_WEIGHT_OPS) -> int:
    """Store `ops`' weight initializers as int8 with a per-output-channel scale, read through
    DequantizeLinear. Compute stays fp32 (weight-only int8); returns the count."""
    import onnx

    inits = {i.name: i for i in model.graph.initializer}
    replaced: dict[str, str] = {}
    new_nodes = []
    for node in model.graph.node:
        if node.op_type not in ops or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name not in replaced:
            made = _int8_weight(model, inits[name], _output_axis)(node)
            if made is None:
                continue
            new_nodes.append(made)
            replaced[name] = made.output[0]
        node.input[1] = replaced[name]
    still_used = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name not in replaced or i.name in still_used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    # DequantizeLinear nodes go first: their inputs are all initializers, so order stays valid.
    nodes = [*new_nodes, *model.graph.node]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.checker.check_model(model)
    return len(replaced)


def _int8_weight(model: Any, init: Any, axis_of: Any) -> Any:
    """A function node -> the DequantizeLinear reading `init` as per-channel symmetric int8
    (adding the int8 tensor, scale and zero point to the graph), or None for tiny weights."""
    from onnx import helper, numpy_helper

    def make(node: Any) -> Any:
        w = numpy_helper.to_array(init).astype(np.float32)
        if w.ndim < 2 or w.size < 64:
            return None
        axis = axis_of(node, w.ndim)
        reduce = tuple(a for a in range(w.ndim) if a != axis)
        scale = np.abs(w).max(axis=reduce) / 127.0
        scale[scale == 0] = 1.0
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
        name = init.name
        model.graph.initializer.extend([
            numpy_helper.from_array(q, f"{name}_int8"),
            numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
            numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zp"),
        ])
        return helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale",
                                                     f"{name}_zp"], [f"{name}_dq"],
                                name=f"{name}_DequantizeLinear", axis=axis)

    return make


def _output_axis(node: Any, ndim: int) -> int:
    """The weight axis that indexes output channels: Conv (O, I, ...) -> 0; MatMul (K, N) -> 1;
    Gemm -> 0 with transB, else 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1
