"""ONNX Runtime (mobile) target: .onnx through torch.onnx's dynamo exporter, .ort through
onnxruntime's converter (with its required-operators config for a reduced build), and the mobile
usability checker's verdict per execution provider."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mobilegen.errors import ExportError
from mobilegen.passes.precision import PrecisionSpec
from mobilegen.signature import ModelIO
from mobilegen.targets.base import Artifact, ExportRequest, Runner
from mobilegen.targets.coverage import mobile_usability, ort_coverage
from mobilegen.targets.fixed_batch import fixed_batch_runner
from mobilegen.targets.profile import TargetProfile

FORMATS = ("onnx", "ort")  # what export() writes (targets.base.Target)

# A protobuf (.onnx without external data, .ort flatbuffer) cannot exceed 2 GiB.
PROTO_LIMIT_BYTES = 2 * 1024**3
EXTERNAL_DATA_ABOVE_BYTES = int(1.8 * 1024**3)


def export(req: ExportRequest) -> list[Artifact]:
    """Lower a captured program (torch.export) to .onnx (+ .ort) in `workdir`."""
    program, io, example, profile = req.program, req.io, req.example, req.profile
    workdir, stem, param_bytes = req.workdir, req.stem, req.param_bytes
    import logging

    import onnx
    import torch

    # The exporter warns about every torchvision op it cannot register; none of ours needs one.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    onnx_path = workdir / f"{stem}.onnx"
    external = param_bytes > EXTERNAL_DATA_ABOVE_BYTES
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the exporter prints progress on stdout
            torch.onnx.export(
                program, example, str(onnx_path), dynamo=True, opset_version=profile.opset,
                input_names=io.input_names, output_names=io.output_names,
                external_data=external, verbose=False,
            )
    except Exception as e:
        raise ExportError(f"torch.onnx.export failed for {stem}: {str(e).splitlines()[0]}") from e
    if not profile.fixed_shapes:  # a fixed-shape capture has no dynamic axis to name
        _name_dynamic_axes(onnx_path, io, external)
    companions = [f"{stem}.onnx.data"] if external else []
    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in model.graph.node})
    details: dict[str, Any] = {
        "opset": profile.opset,
        "external_data": external,
        "operators": ops,
    }
    details["coverage"] = ort_coverage(onnx_path)  # the checker per EP (targets/coverage.py)
    details["mobile_usability"] = mobile_usability(details["coverage"])
    artifacts = [
        Artifact(onnx_path.name, "onnx", profile.name, "onnxruntime", profile.precision,
                 companions, details=details)
    ]
    if profile.ort_format:
        artifacts.append(_to_ort(onnx_path, profile, external))
    return artifacts


def _name_dynamic_axes(path: Path, io: ModelIO, external: bool) -> None:
    """torch.export names dynamic axes s0, s13...; rename them to the signature's names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    specs = {t.name: t for t in (*io.inputs, *io.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        spec = specs.get(value.name)
        if spec is None:
            continue
        for dim, want in zip(value.type.tensor_type.shape.dim, spec.shape, strict=False):
            if isinstance(want, str):
                dim.ClearField("dim_value")
                dim.dim_param = want
    onnx.save(model, str(path))  # external tensors stay where they are (not loaded)


def _to_ort(onnx_path: Path, profile: TargetProfile, external: bool,
            precision: str | None = None) -> Artifact:
    stem = onnx_path.stem
    precision = precision or profile.precision
    ort_name = f"{stem}.ort"
    if external or onnx_path.stat().st_size > PROTO_LIMIT_BYTES:
        return Artifact(
            ort_name, "ort", profile.name, "onnxruntime", precision, runnable=False,
            details={"skipped": "the .ort flatbuffer is limited to 2 GiB and this model's "
                                "weights are larger; ship the .onnx with external data"},
        )
    cmd = [
        sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(onnx_path),
        "--output_dir", str(onnx_path.parent),
        "--optimization_style", profile.ort_optimization_style,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (onnx_path.parent / ort_name).exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ExportError(f"ORT format conversion failed for {onnx_path.name}: {tail[0]}")
    config = f"{stem}.required_operators.config"
    if profile.ort_optimization_style == "Runtime":
        config = f"{stem}.required_operators.with_runtime_opt.config"
    _relative_config_paths(onnx_path.parent / config, onnx_path.parent)
    return Artifact(
        ort_name, "ort", profile.name, "onnxruntime", precision, [config],
        details={"optimization_style": profile.ort_optimization_style,
                 "required_operators_config": config},
    )


def _relative_config_paths(config: Path, folder: Path) -> None:
    """The converter notes the absolute (staging) path of each model in the config's comments;
    keep the file name only, so the config is the same wherever and whenever it was made."""
    if config.exists():
        text = config.read_text().replace(str(folder.resolve()) + "/", "").replace(
            str(folder) + "/", "")
        config.write_text(text)


def load(path: Path, threads: int) -> Runner:
    """An onnxruntime session on the CPU EP (reads .onnx and .ort alike)."""
    import onnxruntime as ort

    if not Path(path).is_file():
        raise ExportError(f"{path}: artifact not found")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    output = session.get_outputs()[0].name
    batch = session.get_inputs()[0].shape[0]

    def run(feeds: dict[str, Any]) -> Any:
        return session.run([output], feeds)[0]

    # a fixed-shape file (profile fixed_shapes) takes its export batch: split other batches
    return run if not isinstance(batch, int) else fixed_batch_runner(run, batch)


# ---------------------------------------------------------------- precision passes (fp16, int8)
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


def supports(spec: PrecisionSpec) -> str | None:
    """None if this target can produce `spec`, else why not (shown in the report row)."""
    if spec.kind == "fp16":
        return None
    if spec.kind == "int8":
        return None
    return (f"{spec.kind} is a Core ML weight compression; ONNX Runtime has no palettized "
            "weight format (use int8 weight_only for a smaller ONNX file)")


def export_precision(req: ExportRequest, spec: PrecisionSpec) -> list[Artifact]:
    """Convert the fp32 .onnx (exported first, by `export`) into `spec`; inputs/outputs stay fp32
    so the same feeds drive every precision. Writes {stem}.{tag}.onnx (+ .ort when asked)."""
    program, io, example, profile = req.program, req.io, req.example, req.profile
    workdir, stem, param_bytes = req.workdir, req.stem, req.param_bytes
    calibration = list(req.calibration)
    import onnx

    fp32 = workdir / f"{stem}.onnx"
    if not fp32.is_file():  # the pipeline always exports fp32 first; a direct caller may not
        export(program, io, example, profile, workdir, stem, param_bytes)
    external = param_bytes > EXTERNAL_DATA_ABOVE_BYTES
    if spec.kind == "int8" and spec.mode == "static" and not calibration:
        raise ExportError(f"int8 static for {stem}: no calibration feeds were collected")
    out = workdir / f"{stem}.{spec.tag}.onnx"
    try:
        details = _convert(fp32, out, spec, calibration, external)
    except Exception as e:  # onnx/onnxruntime raise many types; report one line
        raise ExportError(f"{spec.tag} conversion failed for {fp32.name}: "
                          f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    model = onnx.load(str(out), load_external_data=False)
    details["operators"] = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}"
                                   for n in model.graph.node})
    companions = [p.name for p in workdir.glob(f"{out.name}.data")]
    artifacts = [Artifact(out.name, "onnx", profile.name, "onnxruntime", spec.tag, companions,
                          details=details)]
    if profile.ort_format:
        try:
            artifacts.append(_to_ort(out, profile, external, precision=spec.tag))
        except ExportError as e:  # a failed .ort is a row that says why, not a failed export
            artifacts.append(Artifact(f"{out.stem}.ort", "ort", profile.name, "onnxruntime",
                                      spec.tag, runnable=False, details={"skipped": str(e)}))
    return artifacts


def _convert(src: Path, dst: Path, spec: PrecisionSpec, calibration: list[dict[str, np.ndarray]],
             external: bool) -> dict[str, Any]:
    import onnx

    if spec.kind == "fp16":
        from onnxruntime.transformers.float16 import (
            DEFAULT_OP_BLOCK_LIST,
            convert_float_to_float16,
        )

        model = onnx.load(str(src))
        keep_nodes = _timestep_path(model)
        ops = sorted({*DEFAULT_OP_BLOCK_LIST, *FP16_KEEP_FP32_OPS})
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=ops,
                                        node_block_list=keep_nodes)
        _drop_fp16_round_trips(half, model)
        onnx.save(half, str(dst), save_as_external_data=external)
        return {"method": "onnxruntime.transformers.float16 (keep_io_types)",
                "fp32_ops": [o for o in FP16_KEEP_FP32_OPS if _has_op(model, o)],
                "fp32_timestep_nodes": len(keep_nodes)}
    if spec.mode == "weight_only":
        model = onnx.load(str(src))
        count = _dequantize_linear_weights(model)
        onnx.save(model, str(dst), save_as_external_data=external)
        return {"method": "int8 weights (per-channel symmetric) + DequantizeLinear; float compute",
                "quantized_weights": count}
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    if spec.mode == "dynamic":
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(INT8_DYNAMIC_OPS),
                         per_channel=True, weight_type=QuantType.QInt8,
                         use_external_data_format=external)
        return {"method": "onnxruntime quantize_dynamic (MatMul/Gemm, per-channel int8 weights, "
                          "u8 activations quantized per call)"}
    skip = _timestep_path(onnx.load(str(src), load_external_data=False))
    quantize_static(str(src), str(dst), _FeedReader(calibration), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(INT8_WEIGHT_OPS), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    nodes_to_exclude=skip, use_external_data_format=external)
    return {"method": "onnxruntime quantize_static (QDQ W8A8: per-channel s8 weights, u8 "
                      "activations, MinMax)",
            "calibration_feeds": len(calibration), "excluded_timestep_nodes": len(skip)}


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
    used = {i for n in half.graph.node for i in n.input} | {o.name for o in half.graph.output}
    # Drop Casts (and fp16 constants) nothing reads any more, until the graph stops shrinking.
    while True:
        dead = [n for n in half.graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            break
        for n in dead:
            half.graph.node.remove(n)
        used = {i for n in half.graph.node for i in n.input} | {o.name for o in half.graph.output}
    live = [i for i in half.graph.initializer if i.name in used]
    del half.graph.initializer[:]
    half.graph.initializer.extend(live)
    return len(rename)


def _has_op(model: Any, op: str) -> bool:
    return any(n.op_type == op for n in model.graph.node)


def _timestep_path(model: Any) -> list[str]:
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


def _dequantize_linear_weights(model: Any) -> int:
    """Store MatMul/Gemm/Conv weight initializers as int8 with a per-output-channel scale, read
    through DequantizeLinear. Compute stays fp32 (weight-only int8); returns the count."""
    import onnx
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    replaced: dict[str, str] = {}
    new_nodes = []
    for node in model.graph.node:
        if node.op_type not in INT8_WEIGHT_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in inits:
            continue
        if name not in replaced:
            w = numpy_helper.to_array(inits[name]).astype(np.float32)
            if w.ndim < 2 or w.size < 64:
                continue
            axis = _output_axis(node, w.ndim)
            reduce = tuple(a for a in range(w.ndim) if a != axis)
            scale = np.abs(w).max(axis=reduce) / 127.0
            scale[scale == 0] = 1.0
            shape = [1] * w.ndim
            shape[axis] = -1
            q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
            out = f"{name}_dq"
            model.graph.initializer.extend([
                numpy_helper.from_array(q, f"{name}_int8"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_scale"),
                numpy_helper.from_array(np.zeros_like(scale, dtype=np.int8), f"{name}_zp"),
            ])
            new_nodes.append(helper.make_node(
                "DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zp"], [out],
                name=f"{name}_DequantizeLinear", axis=axis))
            replaced[name] = out
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


def _output_axis(node: Any, ndim: int) -> int:
    """The weight axis that indexes output channels: Conv (O, I, ...) -> 0; MatMul (K, N) -> 1;
    Gemm -> 0 with transB, else 1."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return ndim - 1


class _FeedReader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)
