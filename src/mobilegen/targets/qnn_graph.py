"""Lossless fp32-graph fixes that the QNN/HTP path (targets/qnn.py) applies before quantization.

Unshared biases. onnxruntime's QDQ quantizer (1.32) quantizes the bias input (input 2) of Conv,
Gemm, InstanceNormalization and LayerNormalization as int32 with scale = input scale x weight
scale, so a bias initializer read by several nodes must be copied per node. It names each copy
`f"{name}{k}"` with k one past the largest integer suffix among *initializer* names only
(`ONNXModel.get_largest_initializer_name_suffix`); node outputs are not checked. The dynamo
exporter names both initializers and node outputs `val_N`, so the copies of a shared bias `val_12`
become `val_120`, `val_121`, ... which are already node outputs. In the SD VAE decoder (and the
tiny one) every GroupNorm is exported as Reshape -> InstanceNormalization(scale = ones `val_9`,
bias = zeros `val_12`) -> Reshape -> affine Mul/Add, all norms sharing those two initializers;
the copy `val_126` then shadows the Reshape output `val_126` feeding an InstanceNormalization,
and the quantizer stops with "Quantization parameter shared mode is not supported for weight yet"
(the Reshape output it must quantize like its input now looks like a weight).

The fix gives each consumer of a shared float bias its own copy before quantization, under a name
no quantizer suffix rule can produce (`{name}__{node}_`), so the quantizer never copies: the same
values, the same graph (lossless; the copies are the norms' per-channel vectors).

GroupNorm -> SiLU in the group view. With the quantizer fixed, the tiny decoder compiled whole
on HTP but its W8A16 output in the HTP simulator was wrong (cosine 0.27 to fp32, while the same
QDQ model on the CPU EP matched fp32 at 64 dB). Bisected on single blocks (onnxruntime-qnn 2.7.0,
v75, W8A16): a Reshape back to (B, C, H, W) followed by SiLU (Sigmoid + Mul) and then a Conv is
computed wrongly; the same with SiLU before the Reshape, or with Sigmoid, x*tanh(x), or ReLU in
its place, is right, and so is the W8A8 build. The QNN graph the EP hands over (its JSON dump) is
correct, so it is HTP's own graph preparation. Every GroupNorm -> SiLU -> Conv of the SD decoder
and UNet has this form. The fix keeps the GroupNorm's affine and the SiLU in the group view
(B, G, C/G, H, W), where the per-channel gamma/beta are the same values viewed (G, C/G, 1, 1),
and reshapes to (B, C, H, W) after the SiLU: the same arithmetic (lossless), one more Reshape
each. The view is 5-D because the 4-D view (B, G, C/G, H*W) is computed wrongly too in some
shapes: in a UNet with down_resnets [1, 1], mid_attentions 0 (tests/test_qnn_graph.py) the
up-path norm of 80 channels at 4x4, batch 2, viewed (2, 8, 10, 16): InstanceNorm, Mul, Add and
Sigmoid right (123 dB vs the CPU EP on the same QDQ nodes), the SiLU's Mul wrong (18.7 dB, input
data independent); the same QDQ nodes viewed (2, 8, 10, 4, 4), (2, 80, 16) or (2, 80, 4, 4)
are right (100 dB). Whole model simulator vs CPU EP: 25.0 dB with the 4-D view, 65-68 dB 5-D.
ONNX's own GroupNormalization (opset 21, which the QNN EP maps to QNN GroupNorm) was tried first:
graph finalize fails with QNN_COMMON_ERROR_MEM_ALLOC for W8A16 and W8A8 alike.

Uniform affine constants as scalars (HTP fp16). In fp16 (enable_htp_fp16_precision, v73 / v75 /
v79 alike) HTP fills the whole output with 98304.0078 (1.5 x 2^16, likely an fp16 NaN's bits
decoded as if finite) after InstanceNormalization -> Reshape to the 5-D group view -> Add of a
constant of shape (G, C/G, 1, 1) or (1, G, C/G, 1, 1) whose values are all equal (0, 0.3,
1e-6), such as an initialised GroupNorm's zero beta, so every random-init UNet and decoder
(unet-tiny: -93.9 dB vs fp32). Right in the same setting: a per-channel constant (even one
non-zero entry), a scalar constant, Sub, a uniform Mul, a 3-D or 4-D view or the 5-D
(2, 8, 2, 64, 1), Sigmoid / Mul / Reshape as the producer. The QNN graph the EP hands over is
the same for a uniform and a per-channel constant but for the values: it is HTP's graph
preparation. The rewrite writes a uniform affine constant as a scalar (the same broadcast sum).

Calibration memory (`ordered_calibration`, not a graph change). onnxruntime's MinMax calibrator
appends a ReduceMin and a ReduceMax per tensor as extra graph outputs and runs that model with
the default execution order, which schedules those reductions after the whole original graph:
every intermediate activation stays alive until the end of the run. The SD decoder at 512x512
output went past 11 GB (22 GB earlier) for one calibration feed, while the plain fp32 model runs
in 1.6-1.8 GB; the same augmented model with ExecutionOrder.PRIORITY_BASED ran in 1.8 GB. (The
quantizer's `CalibMaxIntermediateOutputs` does not help: the kept outputs are those scalars, and
1.32's MinMaxCalibrater drops the collected outputs at that count instead of merging them.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# op type -> the input index the QDQ quantizer quantizes as an int32 bias (see the docstring)
BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2, "InstanceNormalization": 2,
              "LayerNormalization": 2, "BatchNormalization": 2}
FLOAT_TYPES = (1, 10, 16)  # onnx TensorProto FLOAT, FLOAT16, BFLOAT16
# onnxruntime's quantizer raises a model to opset 21 for 16-bit QDQ itself, with onnx's version
# converter on the whole model, weights included: past 2 GB (the SnapFusion UNet) protobuf
# cannot serialize it ("Failed to serialize proto"). raise_opset does it on the weightless proto.
QDQ16_OPSET = 21


def unshare_biases(model: Any) -> int:
    """Give every node that reads a float bias initializer shared with other nodes its own copy
    (in place on an onnx ModelProto; weights may stay external: a copy keeps the same external
    location). Returns the number of copies added."""
    import onnx

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in {n for n in node.input if n in inits}:
            readers.setdefault(name, []).append(node)
    taken = set(inits) | {o for n in graph.node for o in n.output} | {
        v.name for v in (*graph.input, *graph.output)}
    added = 0
    for name, nodes in readers.items():
        bias_readers = [n for n in nodes if _reads_as_bias(n, name)]
        if len(nodes) < 2 or not bias_readers or inits[name].data_type not in FLOAT_TYPES:
            continue
        for k, node in enumerate(bias_readers[1:] if len(bias_readers) == len(nodes)
                                 else bias_readers):
            new = _fresh_name(f"{name}__{node.name or k}", taken)
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = new
            graph.initializer.append(copy)
            node.input[BIAS_INPUT[node.op_type]] = new
            taken.add(new)
            added += 1
    return added


def _reads_as_bias(node: Any, name: str) -> bool:
    slot = BIAS_INPUT.get(node.op_type)
    return slot is not None and len(node.input) > slot and node.input[slot] == name


def _fresh_name(base: str, taken: set[str]) -> str:
    """A name from `base` that is not in `taken` and ends in '_', so that no quantizer copy
    name (`{name}{int}`) can equal it."""
    name, k = f"{base}_", 0
    while name in taken:
        k += 1
        name = f"{base}_{'x' * k}_"
    return name


# ----------------------------------------------------------------------------- GroupNorm + SiLU
@dataclass
class _GroupNorm:
    """One exported GroupNorm: Reshape(x, [B, G, -1]) -> InstanceNormalization(ones, zeros)
    -> Reshape(back to x's shape) [-> Mul(gamma (C, 1, ..)) -> Add(beta)]."""

    x: str
    shape: list[int]  # x's static shape (B, C, ...)
    groups: int
    reshape_back: Any  # the Reshape node after the InstanceNormalization
    affine: list[tuple[Any, str]]  # (Mul/Add node, its per-channel constant input)
    output: str  # the pattern's last output


def group_view_silu(model: Any, base_dir: Path | None = None) -> int:
    """Where an exported GroupNorm feeds a SiLU (Sigmoid + Mul), apply its affine and the SiLU
    in the group view (B, G, C/G, H, W) and reshape to (B, C, H, W) after the SiLU instead of
    before it (see the module docstring: HTP computes Reshape -> SiLU -> Conv wrongly, and the
    SiLU in a 4-D group view in some shapes). The same arithmetic: the affine constants are the
    same values viewed (G, C/G, 1, 1), or a scalar when all are equal (HTP fp16 adds a uniform
    view wrongly), and SiLU is elementwise. In place; returns the number of GroupNorms
    rewritten."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = model.graph
    links = _Links(model, base_dir)
    done = 0
    for inorm in [n for n in graph.node if n.op_type == "InstanceNormalization"]:
        gn = _match_group_norm(links, inorm)
        silu = None if gn is None else _silu_of(links, gn.output)
        if gn is None or silu is None or len(gn.shape) != 4:
            continue
        b, c, h, w = gn.shape
        view = [b, gn.groups, c // gn.groups, h, w]
        names = [_fresh_name(f"{gn.output}__{k}", links.names) for k in ("view", "shape", "pre")]
        links.names.update(names)
        graph.initializer.extend([numpy_helper.from_array(np.array(view, np.int64), names[0]),
                                  numpy_helper.from_array(np.array(gn.shape, np.int64),
                                                          names[1])])
        gn.reshape_back.input[1] = names[0]
        for node, const in gn.affine:
            k = _fresh_name(f"{const}__{node.name}_view", links.names)
            links.names.add(k)
            value = links.const(const).reshape(view[1], view[2], 1, 1)
            if np.all(value == value.flat[0]):  # uniform: a scalar (HTP fp16, docstring)
                value = np.array(value.flat[0], value.dtype)
            graph.initializer.append(numpy_helper.from_array(value, k))
            node.input[list(node.input).index(const)] = k
        sig, mul = silu
        out, mul.output[0] = mul.output[0], names[2]
        back = helper.make_node("Reshape", [names[2], names[1]], [out], name=f"{out}__to_nchw")
        graph.node.insert(list(graph.node).index(mul) + 1, back)
        _forget_shapes(graph, {gn.reshape_back.output[0], sig.output[0], *(
            n.output[0] for n, _ in gn.affine)})
        done += 1
    if done:
        _drop_unused(graph)
    return done


def _silu_of(links: _Links, name: str) -> tuple[Any, Any] | None:
    """(Sigmoid, Mul) when `name` is read by exactly a SiLU: Mul(name, Sigmoid(name))."""
    users = links.consumers.get(name, [])
    sig = next((n for n in users if n.op_type == "Sigmoid"), None)
    mul = None if sig is None else links.only_consumer(sig.output[0], "Mul")
    if len(users) != 2 or mul is None or mul not in users or \
            sorted(mul.input) != sorted([name, sig.output[0]]):
        return None
    return sig, mul


def _forget_shapes(graph: Any, names: set[str]) -> None:
    """Drop value_info entries whose shapes a rewrite changed (shape inference redoes them)."""
    kept = [v for v in graph.value_info if v.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def prepare_for_htp(model: Any, base_dir: Path | None = None) -> dict[str, Any]:
    """The fp32 graph fixes for the QNN path, in place on an onnx ModelProto (loaded without
    its external data, which lies in `base_dir`); what each one changed."""
    return {"group_norm_silu_in_group_view": group_view_silu(model, base_dir),
            "unshared_bias_copies": unshare_biases(model),
            "opset_raised_from": raise_opset(model)}


def raise_opset(model: Any, version: int = QDQ16_OPSET) -> int | None:
    """Convert the model to `version` with onnx's version converter, here on the proto without
    its weights; returns the opset it had, None when it was already there."""
    import onnx

    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None or current >= version:
        return None
    model.CopyFrom(onnx.version_converter.convert_version(model, version))
    return current


class _Links:
    """Producers, consumers, initializers and static shapes of a graph (built once)."""

    def __init__(self, model: Any, base_dir: Path | None) -> None:
        graph = model.graph
        self.base_dir = base_dir  # where external weight data lies (None: all inline)
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[Any]] = {}
        for n in graph.node:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.inits = {i.name: i for i in graph.initializer}
        self.shapes = _static_shapes(model)
        self.names = set(self.inits) | set(self.producer) | {v.name for v in graph.input}

    def only_consumer(self, name: str, op_type: str) -> Any:
        users = self.consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type else None

    def const(self, name: str) -> Any:
        """An initializer's value (numpy; read from external data when it lies there), None for
        a computed tensor. Only called on small tensors: shapes, norm and affine vectors."""
        from onnx import numpy_helper

        tensor = self.inits.get(name)
        if tensor is None:
            return None
        external = tensor.data_location == 1  # onnx.TensorProto.EXTERNAL
        if external and self.base_dir is None:
            return None
        return numpy_helper.to_array(tensor, str(self.base_dir) if external else "")


def _static_shapes(model: Any) -> dict[str, list[int | None]]:
    """Every value's shape by ONNX shape inference (with data propagation, for Reshape targets
    computed by Shape nodes) from the graph inputs, which are fixed here; the exporter's own
    value_info may still name the batch axis symbolically."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.ClearField("value_info")
    for t in probe.graph.initializer:  # shapes need dims only; drop external references
        if t.data_location == 1:
            t.ClearField("external_data")
            t.data_location = 0
    inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True).graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else None
                     for d in v.type.tensor_type.shape.dim]
            for v in (*inferred.input, *inferred.value_info, *inferred.output)}


def _match_group_norm(links: _Links, inorm: Any) -> _GroupNorm | None:
    """The GroupNorm pattern around one InstanceNormalization, or None when it is not one."""
    import numpy as np

    r1 = links.producer.get(inorm.input[0])
    scale, bias = (links.const(n) for n in inorm.input[1:3])
    if r1 is None or r1.op_type != "Reshape" or scale is None or bias is None or \
            not (np.all(scale == 1) and np.all(bias == 0)) or \
            links.only_consumer(r1.output[0], "InstanceNormalization") is not inorm:
        return None
    x, groups = r1.input[0], len(scale)
    shape, target = links.shapes.get(x), links.const(r1.input[1])
    if not shape or None in shape or len(shape) < 3 or shape[1] % groups or target is None or \
            list(target) not in ([0, groups, -1], [shape[0], groups, -1]):
        return None
    r2 = links.only_consumer(inorm.output[0], "Reshape")
    if r2 is None or not _restores(links, r2, x, shape):
        return None
    affine, out = [], r2.output[0]
    for op_type in ("Mul", "Add"):
        node = links.only_consumer(out, op_type)
        const = None if node is None else _channel_const(links, node, out, shape)
        if const is None:
            break
        affine.append((node, const))
        out = node.output[0]
    return _GroupNorm(x, shape, groups, r2, affine, out)


def _restores(links: _Links, r2: Any, x: str, shape: list[int]) -> bool:
    """Whether Reshape `r2` gives back x's shape: its shape input is Shape(x), or a constant
    equal to x's static shape."""
    src = links.producer.get(r2.input[1])
    if src is not None and src.op_type == "Shape" and src.input[0] == x:
        span = {a.name: a.i for a in src.attribute}  # the whole shape: start 0, no end
        if span.get("start", 0) == 0 and span.get("end", len(shape)) >= len(shape):
            return True
    target = links.const(r2.input[1])
    return target is not None and list(target) == shape


def _channel_const(links: _Links, node: Any, data: str, shape: list[int]) -> str | None:
    """The name of the per-channel constant a Mul/Add applies to `data` of `shape` (N, C, ...):
    an initializer of shape (C, 1, ...) or (1, C, 1, ...); None for anything else."""
    other = node.input[1] if node.input[0] == data else node.input[0]
    value = links.const(other)
    if value is None or list(node.input).count(data) != 1:
        return None
    c, rest = shape[1], len(shape) - 2
    return other if value.shape in ((c,) + (1,) * rest, (1, c) + (1,) * rest) else None


def _drop_unused(graph: Any) -> None:
    """Remove nodes whose outputs nothing reads (the Shape nodes of fused patterns), and the
    initializers and value_info entries nothing reads or produces any more."""
    outputs = {v.name for v in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        live = [n for n in graph.node if any(o in read for o in n.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    produced = {o for n in graph.node for o in n.output}
    for field, keep in ((graph.initializer, read), (graph.value_info, produced)):
        kept = [v for v in field if v.name in keep]
        del field[:]
        field.extend(kept)


# ----------------------------------------------------------------------------- calibration
@contextlib.contextmanager
def ordered_calibration() -> Iterator[None]:
    """Within this block onnxruntime's calibrators run their augmented model with
    ExecutionOrder.PRIORITY_BASED (each ReduceMin/ReduceMax right after its tensor is made), so
    calibration holds about one fp32 run's activations instead of all of them (see the module
    docstring). Same session otherwise (no graph optimization, as the calibrator sets it); the
    order changes no number. Restores the library's method on exit."""
    import onnxruntime as ort
    from onnxruntime.quantization import calibrate

    original = calibrate.CalibraterBase.create_inference_session

    def create_inference_session(self: Any) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.execution_order = ort.ExecutionOrder.PRIORITY_BASED
        self.infer_session = ort.InferenceSession(self.augmented_model_path, sess_options=so,
                                                  providers=self.execution_providers)

    calibrate.CalibraterBase.create_inference_session = create_inference_session
    try:
        yield
    finally:
        calibrate.CalibraterBase.create_inference_session = original


@contextlib.contextmanager
def weights_beside(model_path: Path) -> Iterator[None]:
    """Run a block in the model's folder: onnx's model checker (which onnxruntime's
    `fix_output_shapes` calls on an in-memory model) finds external weight data by the path
    the model records, relative to the current directory; without this a model past 2 GB
    (the SnapFusion UNet) failed with "... should be stored in X.onnx.data, but it is not
    regular file"."""
    with contextlib.chdir(model_path.parent):
        yield
